"""The detokenisers zero-shot evaluations apply before a model's own tokenizer.

WikiText and One Billion Words are published *tokenised* (``the cat 's`` , `` @-@ ``), which no
model saw in training; the GPT-2 paper and the SEDD / MDLM evaluations undo that tokenisation
with rule lists like these before scoring, and LAMBADA's curly quotes are made straight.
Each function maps raw text to text; ``get`` looks one up by name.
"""

from __future__ import annotations

import re
from typing import Callable

Detokenizer = Callable[[str], str]

_SPACED_PUNCTUATION = ((" . ", ". "), (" , ", ", "), (" ; ", "; "), (" : ", ": "),
                       (" ! ", "! "), (" ? ", "? "))
_CONTRACTIONS = re.compile(r" (n't|'t|'s|'re|'ve|'m|'ll|'d)\b", re.IGNORECASE)


def wikitext(text: str) -> str:
  """WikiText raw tokens to text: `` @-@ `` / `` @,@ `` / `` @.@ `` joiners, spaced
  punctuation, brackets and quotes, contractions, ``= = Heading = =`` markup and the space
  that starts each line."""
  text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
  for spaced, joined in _SPACED_PUNCTUATION:
    text = text.replace(spaced, joined)
  text = re.sub(r" ([.,;:!?])$", r"\1", text, flags=re.MULTILINE)
  text = re.sub(r"([(\[{]) ", r"\1", text)
  text = re.sub(r" ([)\]}])", r"\1", text)
  text = re.sub(r'" ([^"\n]*?) "', r'"\1"', text)
  text = _CONTRACTIONS.sub(r"\1", text)
  text = text.replace("= = = =", "====").replace("= = =", "===").replace("= =", "==")
  text = re.sub(r"^ ", "", text, flags=re.MULTILINE)
  return text.replace(" \n", "\n")


def lm1b(text: str) -> str:
  """One Billion Words tokens to text: contractions, spaced punctuation, quotes, brackets,
  currency and hyphens."""
  text = _CONTRACTIONS.sub(r"\1", text)
  text = re.sub(r" ([.,;:!?%])", r"\1", text)
  text = re.sub(r"([$(\[]) ", r"\1", text)
  text = re.sub(r" ([)\]])", r"\1", text)
  text = re.sub(r'" ([^"]*?) "', r'"\1"', text)
  return text.replace(" - ", "-").replace(" ' ", "'")


def lambada(text: str) -> str:
  """LAMBADA (OpenAI): straight quotes for curly ones, outer whitespace stripped."""
  for curly, straight in (("\u201c", '"'), ("\u201d", '"'), ("\u2018", "'"), ("\u2019", "'")):
    text = text.replace(curly, straight)
  return text.strip()


def identity(text: str) -> str:
  """No change."""
  return text


DETOKENIZERS: dict[str, Detokenizer] = {"wikitext": wikitext, "lm1b": lm1b, "lambada": lambada,
                                        "none": identity}


def get(name: str) -> Detokenizer:
  """The detokeniser called ``name``."""
  if name not in DETOKENIZERS:
    raise ValueError(f"unknown detokenizer {name!r}; expected one of {sorted(DETOKENIZERS)}.")
  return DETOKENIZERS[name]
