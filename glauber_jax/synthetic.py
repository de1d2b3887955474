"""A synthetic language whose likelihood is known exactly: the testbed of the Glauber sampler.

``HiddenMarkovLanguage`` is a stationary hidden Markov model over ``H`` hidden states and ``V``
letters: ``z_0 ~ initial`` (the stationary distribution of ``transition``, so every window of
the stream has the same law whatever its offset), ``z_t ~ transition[z_{t-1}]``,
``x_t ~ emission[z_t]``. Everything it answers is exact (float64, scaled forward-backward):

- ``log_prob(letters)``: ``log p(x_1..L)`` (forward algorithm);
- ``infill_log_probs(letters, site)``: ``log p(x_k = a | x_{-k})`` for every letter ``a``
  (forward-backward), the quantity a MASK-INFILL step of the Glauber sampler should produce;
- ``enumerate_log_probs(length)``: the whole distribution over ``V ** length`` sequences
  (lexicographic order, first letter most significant) when that is at most ``2 ** 22``;
- ``unigram_entropy()``; and Monte Carlo estimates, each ``(mean, standard_error)``, of the
  per-token NLL of data (``nll_per_token``) and of the single-site infill entropy
  (``infill_entropy``).

``HiddenMarkovLanguage.random`` draws a sparse-ish HMM (Dirichlet rows);
``HiddenMarkovLanguage.markov_chain`` a visible first-order Markov chain (``emission`` the
identity, ``H = V``), small enough to enumerate; ``perturbed`` a nearby language for controlled
experiments. Letters are ints ``0..V-1``; ``to_text`` / ``from_text`` write them as characters of
``ALPHABET`` so tasks can produce documents as text.

``SyntheticConfig`` holds every setting of a synthetic task (the gin functions in
``tasks/registry.py`` build one). ``glauber_jax.synthetic_judge`` scores model samples against
the truth. NumPy only. ``docs/data.md`` ("Synthetic languages") describes the tasks and the
judge.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import string
from typing import Any, Optional, Sequence

import numpy as np


#: The characters letters ``0..63`` are written as (``to_text``); ``V`` letters use the first V.
ALPHABET = string.ascii_letters + string.digits + "+/"

#: ``enumerate_log_probs`` refuses more sequences than this.
MAX_ENUMERATION = 2 ** 22

#: Dirichlet draws are floored at this (then renormalised): every transition and emission has
#: positive probability, so the chain is irreducible and every sequence has ``p > 0``.
PROBABILITY_FLOOR = 1e-30

_ROWS_PER_CHUNK = 8192  # Sequences per batch in the Monte Carlo helpers and the enumeration.


# ---- Letters as text ---------------------------------------------------------------------------


def alphabet(num_letters: int) -> str:
  """The characters of letters ``0..num_letters-1``: ``ALPHABET[:num_letters]``."""
  if not 1 <= num_letters <= len(ALPHABET):
    raise ValueError(f"num_letters must be in [1, {len(ALPHABET)}] to be written as text, got "
                     f"{num_letters}.")
  return ALPHABET[:num_letters]


_CHARACTERS = np.frombuffer(ALPHABET.encode("ascii"), np.uint8)
_LETTER_OF_BYTE = np.full(256, -1, np.int32)
_LETTER_OF_BYTE[_CHARACTERS] = np.arange(len(ALPHABET))


def to_text(letters: np.ndarray | Sequence[int] | Sequence[Sequence[int]]) -> str | list[str]:
  """Letters as text over ``ALPHABET``: ``[L] -> str``, ``[n, L] -> list[str]``."""
  letters = np.asarray(letters)
  if letters.size and (letters.min() < 0 or letters.max() >= len(ALPHABET)):
    raise ValueError(f"letters must be in [0, {len(ALPHABET)}) to be written as text; got "
                     f"values in [{letters.min()}, {letters.max()}].")
  if letters.ndim == 1:
    return _CHARACTERS[letters].tobytes().decode("ascii")
  if letters.ndim != 2:
    raise ValueError(f"letters must be [L] or [n, L], got shape {letters.shape}.")
  blob = _CHARACTERS[letters].tobytes().decode("ascii")
  width = letters.shape[1]
  return [blob[i * width:(i + 1) * width] for i in range(letters.shape[0])]


def from_text(text: str | Sequence[str]) -> np.ndarray:
  """The inverse of ``to_text``: ``str -> int32 [L]``, equally long strings ``-> [n, L]``."""
  if isinstance(text, str):
    try:
      codes = np.frombuffer(text.encode("ascii"), np.uint8)
    except UnicodeEncodeError:
      codes = np.full(1, 0xFF, np.uint8)  # Caught below as a character outside the alphabet.
    letters = _LETTER_OF_BYTE[codes]
    if np.any(letters < 0):
      bad = sorted({c for c in text if c not in ALPHABET})
      raise ValueError(f"characters {bad} are not letters of the alphabet {ALPHABET!r}.")
    return letters
  rows = [from_text(t) for t in text]
  if len({len(row) for row in rows}) > 1:
    raise ValueError("from_text of several strings needs them equally long.")
  return np.stack(rows) if rows else np.zeros((0, 0), np.int32)


def sequence_index(letters: np.ndarray, num_letters: int) -> np.ndarray:
  """``int64 [n]``: each row of ``letters [n, L]`` as a base-``V`` number, first letter most
  significant: its position in ``enumerate_log_probs``."""
  letters = np.asarray(letters, np.int64)
  weights = num_letters ** np.arange(letters.shape[1] - 1, -1, -1, dtype=np.int64)
  return letters @ weights


def sequences_of_indices(indices: np.ndarray, num_letters: int, length: int) -> np.ndarray:
  """``int32 [n, length]``: the inverse of ``sequence_index``."""
  indices = np.asarray(indices, np.int64)
  weights = num_letters ** np.arange(length - 1, -1, -1, dtype=np.int64)
  return ((indices[:, None] // weights) % num_letters).astype(np.int32)


# ---- The language ------------------------------------------------------------------------------


def _normalised_rows(matrix: np.ndarray, name: str) -> np.ndarray:
  matrix = np.array(matrix, np.float64)
  if matrix.ndim != 2 or np.any(~np.isfinite(matrix)) or np.any(matrix < 0):
    raise ValueError(f"{name} must be a 2-D array of non-negative finite numbers.")
  sums = matrix.sum(axis=1, keepdims=True)
  if np.any(np.abs(sums - 1) > 1e-6):
    raise ValueError(f"the rows of {name} must sum to 1; they sum to {sums.ravel()}.")
  return matrix / sums


def _dirichlet_rows(rng: np.random.Generator, rows: int, columns: int, concentration: float
                    ) -> np.ndarray:
  """``[rows, columns]`` independent symmetric Dirichlet rows, floored at ``PROBABILITY_FLOOR``."""
  if concentration <= 0:
    raise ValueError(f"a Dirichlet concentration must be positive, got {concentration}.")
  draws = rng.dirichlet(np.full(columns, concentration), size=rows)
  draws = np.maximum(draws, PROBABILITY_FLOOR)
  return draws / draws.sum(axis=1, keepdims=True)


def stationary_distribution(transition: np.ndarray) -> np.ndarray:
  """The ``pi`` with ``pi @ transition = pi`` and ``sum(pi) = 1`` (unique for an irreducible
  chain; solved as a linear system, then polished by a few power steps)."""
  transition = np.asarray(transition, np.float64)
  size = transition.shape[0]
  system = transition.T - np.eye(size)
  system[-1] = 1.0
  rhs = np.zeros(size)
  rhs[-1] = 1.0
  pi = np.linalg.lstsq(system, rhs, rcond=None)[0]
  pi = np.maximum(pi, 0.0)
  pi /= pi.sum()
  for _ in range(3):
    pi = pi @ transition
    pi /= pi.sum()
  return pi


def _entropies(log_probs: np.ndarray) -> np.ndarray:
  """Shannon entropies (nats) along the last axis of log-probabilities (``-inf`` allowed)."""
  probs = np.exp(log_probs)
  terms = np.where(probs > 0, probs * np.where(probs > 0, log_probs, 0.0), 0.0)
  return -terms.sum(axis=-1)


def _mean_and_standard_error(values: np.ndarray) -> tuple[float, float]:
  values = np.asarray(values, np.float64)
  if values.size < 2:
    raise ValueError("a standard error needs at least two samples.")
  return float(values.mean()), float(values.std(ddof=1) / math.sqrt(values.size))


@dataclasses.dataclass(frozen=True, eq=False)
class HiddenMarkovLanguage:
  """A stationary hidden Markov model over letters ``0..V-1`` (see the module docstring).

  Attributes:
    initial: ``[H]`` the law of the first hidden state; the stationary distribution of
      ``transition`` for every language this module builds.
    transition: ``[H, H]`` row-stochastic, ``transition[i, j] = p(z_t = j | z_{t-1} = i)``.
    emission: ``[H, V]`` row-stochastic, ``emission[h, a] = p(x_t = a | z_t = h)``.

  The arrays are float64 copies, normalised and read-only. Equality is identity (arrays).
  """

  initial: np.ndarray
  transition: np.ndarray
  emission: np.ndarray

  def __post_init__(self) -> None:
    transition = _normalised_rows(self.transition, "transition")
    emission = _normalised_rows(self.emission, "emission")
    initial = _normalised_rows(np.asarray(self.initial)[None], "initial")[0]
    states = transition.shape[0]
    if transition.shape != (states, states) or emission.shape[0] != states or initial.shape != (
        states,):
      raise ValueError(f"shapes do not agree: initial {initial.shape}, transition "
                       f"{transition.shape}, emission {emission.shape} (need [H], [H, H], "
                       "[H, V]).")
    for name, value in (("initial", initial), ("transition", transition),
                        ("emission", emission)):
      value.setflags(write=False)
      object.__setattr__(self, name, value)

  # -- Construction --

  @classmethod
  def random(cls, num_states: int, num_letters: int, seed: int,
             transition_concentration: float = 0.07, emission_concentration: float = 0.015
             ) -> "HiddenMarkovLanguage":
    """A random HMM: every row of ``transition`` and ``emission`` an independent symmetric
    Dirichlet draw (small concentrations make sparse-ish rows: few likely successors per
    state, few likely letters per state), ``initial`` the stationary distribution.

    The defaults give, for 32 states and 64 letters (seed 0, length 32): unigram entropy 3.62
    nats, per-token NLL 2.24 and single-site infill entropy 1.35 (``docs/data.md``).
    """
    if num_states < 1 or num_letters < 1:
      raise ValueError(f"need at least one state and one letter, got {num_states}, "
                       f"{num_letters}.")
    rng = np.random.default_rng(seed)
    transition = _dirichlet_rows(rng, num_states, num_states, transition_concentration)
    emission = _dirichlet_rows(rng, num_states, num_letters, emission_concentration)
    return cls(stationary_distribution(transition), transition, emission)

  @classmethod
  def markov_chain(cls, num_letters: int, seed: int, concentration: float = 0.5
                   ) -> "HiddenMarkovLanguage":
    """A visible first-order Markov chain over ``num_letters`` letters: Dirichlet transition
    rows, ``emission`` the identity (``H = V``), ``initial`` stationary. Small ``V ** L`` can be
    enumerated exactly (``enumerate_log_probs``)."""
    if num_letters < 1:
      raise ValueError(f"need at least one letter, got {num_letters}.")
    rng = np.random.default_rng(seed)
    transition = _dirichlet_rows(rng, num_letters, num_letters, concentration)
    return cls(stationary_distribution(transition), transition, np.eye(num_letters))

  def perturbed(self, strength: float, seed: int, concentration: float = 0.1
                ) -> "HiddenMarkovLanguage":
    """Another language: each row of ``transition`` (and of ``emission``, unless it is the
    identity: a visible chain stays visible) becomes ``(1 - s) * row + s * new`` with ``new``
    a fresh symmetric Dirichlet(``concentration``) draw, renormalised; ``initial`` is the new
    stationary distribution. ``strength`` 0 gives the same law, 1 an unrelated one."""
    if not 0 <= strength <= 1:
      raise ValueError(f"strength must be in [0, 1], got {strength}.")
    rng = np.random.default_rng(seed)
    states, letters = self.emission.shape
    transition = ((1 - strength) * self.transition
                  + strength * _dirichlet_rows(rng, states, states, concentration))
    transition /= transition.sum(axis=1, keepdims=True)
    emission = np.array(self.emission)
    if not self.is_visible:
      emission = (1 - strength) * emission + strength * _dirichlet_rows(rng, states, letters,
                                                                        concentration)
      emission /= emission.sum(axis=1, keepdims=True)
    return HiddenMarkovLanguage(stationary_distribution(transition), transition, emission)

  # -- Shape --

  @property
  def num_states(self) -> int:
    return int(self.transition.shape[0])

  @property
  def num_letters(self) -> int:
    return int(self.emission.shape[1])

  @property
  def is_visible(self) -> bool:
    """Whether the states are the letters (``emission`` is the identity): a Markov chain."""
    return (self.num_states == self.num_letters
            and bool(np.array_equal(self.emission, np.eye(self.num_letters))))

  @property
  def alphabet(self) -> str:
    """The characters of this language's letters (``alphabet(V)``)."""
    return alphabet(self.num_letters)

  def _check_letters(self, letters: Any) -> np.ndarray:
    letters = np.asarray(letters)
    if letters.ndim != 2 or letters.shape[1] < 1:
      raise ValueError(f"letters must be [n, L] with L >= 1, got shape {letters.shape}.")
    if not np.issubdtype(letters.dtype, np.integer) and letters.size:
      raise ValueError(f"letters must be integers, got {letters.dtype}.")
    if letters.size and (letters.min() < 0 or letters.max() >= self.num_letters):
      raise ValueError(f"letters must be in [0, {self.num_letters}); got values in "
                       f"[{letters.min()}, {letters.max()}].")
    return letters.astype(np.int64)

  # -- Sampling --

  def sample(self, rng: np.random.Generator, num_sequences: int, length: int) -> np.ndarray:
    """``int32 [num_sequences, length]`` letters drawn from the language (inverse CDF on the
    float64 cumulative rows: a letter of probability 0 is never drawn)."""
    if num_sequences < 0 or length < 1:
      raise ValueError(f"need num_sequences >= 0 and length >= 1, got {num_sequences}, "
                       f"{length}.")

    def cdf(rows: np.ndarray) -> np.ndarray:
      sums = np.cumsum(rows, axis=-1)
      return sums / sums[..., -1:]  # The last entry is exactly 1, and so are trailing zeros.

    def draw(cumulative: np.ndarray) -> np.ndarray:
      uniform = rng.random(cumulative.shape[0])
      return np.sum(uniform[:, None] >= cumulative, axis=1)

    initial_cdf = cdf(self.initial)
    transition_cdf, emission_cdf = cdf(self.transition), cdf(self.emission)
    letters = np.zeros((num_sequences, length), np.int32)
    state = draw(np.broadcast_to(initial_cdf, (num_sequences, self.num_states)))
    for t in range(length):
      if t:
        state = draw(transition_cdf[state])
      letters[:, t] = draw(emission_cdf[state])
    return letters

  # -- Exact likelihoods --

  def _forward(self, letters: np.ndarray, keep: bool = True
               ) -> tuple[Optional[np.ndarray], np.ndarray]:
    """Scaled forward pass: ``(predicted [n, L, H], log_normaliser [n])`` where
    ``predicted[:, t] = p(z_t | x_<t)`` (None unless ``keep``) and ``log_normaliser = log
    p(x)``."""
    n, length = letters.shape
    emission_t = self.emission.T  # [V, H]
    predicted = np.zeros((n, length, self.num_states)) if keep else None
    log_total = np.zeros(n)
    belief = np.broadcast_to(self.initial, (n, self.num_states))
    with np.errstate(divide="ignore", invalid="ignore"):
      for t in range(length):
        if t:
          belief = belief @ self.transition
        if predicted is not None:
          predicted[:, t] = belief
        joint = belief * emission_t[letters[:, t]]
        scale = joint.sum(axis=1)
        log_total += np.log(scale)
        belief = joint / np.where(scale > 0, scale, 1.0)[:, None]
    return predicted, log_total

  def _backward(self, letters: np.ndarray) -> np.ndarray:
    """Scaled backward messages ``[n, L, H]``, each row proportional to ``p(x_>t | z_t)``."""
    n, length = letters.shape
    emission_t = self.emission.T
    backward = np.ones((n, length, self.num_states))
    with np.errstate(divide="ignore", invalid="ignore"):
      for t in range(length - 2, -1, -1):
        message = (emission_t[letters[:, t + 1]] * backward[:, t + 1]) @ self.transition.T
        scale = message.sum(axis=1, keepdims=True)
        backward[:, t] = message / np.where(scale > 0, scale, 1.0)
    return backward

  def log_prob(self, letters: np.ndarray) -> np.ndarray:
    """``float64 [n]``: the exact ``log p(x)`` of each row of ``letters [n, L]`` (nats; the
    scaled forward algorithm; ``-inf`` for an impossible sequence)."""
    letters = self._check_letters(letters)
    return self._forward(letters, keep=False)[1]

  def all_infill_log_probs(self, letters: np.ndarray) -> np.ndarray:
    """``float64 [n, L, V]``: ``log p(x_k = a | x_{-k})`` for every site ``k`` and letter ``a``
    (forward-backward)."""
    letters = self._check_letters(letters)
    predicted, _ = self._forward(letters)
    posterior = predicted * self._backward(letters)  # ∝ p(z_k | x_{-k})
    with np.errstate(divide="ignore", invalid="ignore"):
      probs = posterior @ self.emission
      probs /= probs.sum(axis=-1, keepdims=True)
      return np.log(probs)

  def infill_log_probs(self, letters: np.ndarray, site: int | np.ndarray) -> np.ndarray:
    """``float64 [n, V]``: the exact single-site conditional ``log p(x_k = a | x_{-k})`` at
    ``site`` (one int for every row, or ``int [n]``, one per row); the letter at the site is
    ignored."""
    letters = self._check_letters(letters)
    n, length = letters.shape
    sites = np.broadcast_to(np.asarray(site, np.int64), (n,))
    if np.any((sites < 0) | (sites >= length)):
      raise ValueError(f"sites must be in [0, {length}), got {site}.")
    predicted, _ = self._forward(letters)
    backward = self._backward(letters)
    rows = np.arange(n)
    posterior = predicted[rows, sites] * backward[rows, sites]
    with np.errstate(divide="ignore", invalid="ignore"):
      probs = posterior @ self.emission
      probs /= probs.sum(axis=-1, keepdims=True)
      return np.log(probs)

  def enumerate_log_probs(self, length: int) -> np.ndarray:
    """``float64 [V ** length]``: ``log p`` of every sequence of ``length`` letters, in
    lexicographic order (letters as base-``V`` digits, the first letter most significant; see
    ``sequence_index``). ValueError beyond ``MAX_ENUMERATION`` sequences."""
    if length < 1:
      raise ValueError(f"length must be positive, got {length}.")
    count = self.num_letters ** length
    if count > MAX_ENUMERATION:
      raise ValueError(f"cannot enumerate {self.num_letters}**{length} = {count} sequences: more "
                       f"than {MAX_ENUMERATION} (2**22); use a smaller alphabet or length.")
    out = np.empty(count)
    for start in range(0, count, _ROWS_PER_CHUNK):
      indices = np.arange(start, min(count, start + _ROWS_PER_CHUNK))
      out[indices] = self.log_prob(sequences_of_indices(indices, self.num_letters, length))
    return out

  # -- Entropies --

  def unigram_entropy(self) -> float:
    """Exact entropy (nats) of one letter's marginal, ``initial @ emission`` (the same at
    every position: the chain is stationary)."""
    marginal = self.initial @ self.emission
    return float(_entropies(np.log(np.maximum(marginal, 1e-300))[None])[0])

  def nll_per_token(self, length: int, num_samples: int, seed: int | Sequence[int]
                    ) -> tuple[float, float]:
    """Monte Carlo ``(mean, standard_error)`` of ``-log p(x) / length`` over ``num_samples``
    sequences drawn from the language with ``np.random.default_rng(seed)``: the per-token
    entropy ``H(X_1..L) / L`` of data of this length."""
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, num_samples, _ROWS_PER_CHUNK):
      letters = self.sample(rng, min(_ROWS_PER_CHUNK, num_samples - start), length)
      values.append(-self.log_prob(letters) / length)
    return _mean_and_standard_error(np.concatenate(values) if values else np.zeros(0))

  def infill_entropy(self, length: int, num_samples: int, seed: int | Sequence[int]
                     ) -> tuple[float, float]:
    """Monte Carlo ``(mean, standard_error)`` of the entropy (nats) of the exact single-site
    conditional ``p(x_k | x_{-k})``, averaged over the sites of each of ``num_samples``
    sequences drawn with ``np.random.default_rng(seed)`` (the standard error is over
    sequences): what an ideal MASK-INFILL step leaves uncertain."""
    rng = np.random.default_rng(seed)
    values = []
    for start in range(0, num_samples, _ROWS_PER_CHUNK // 4):
      letters = self.sample(rng, min(_ROWS_PER_CHUNK // 4, num_samples - start), length)
      values.append(_entropies(self.all_infill_log_probs(letters)).mean(axis=1))
    return _mean_and_standard_error(np.concatenate(values) if values else np.zeros(0))


# ---- Task configuration --------------------------------------------------------------------------

KINDS = ("hmm", "enum")
SPLIT_NAMES = ("train", "validation", "test")


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Every setting of a synthetic task (``tasks/registry.py`` builds one from gin).

  Attributes:
    kind: ``hmm`` (``HiddenMarkovLanguage.random``) or ``enum`` (``markov_chain``: visible,
      enumerable).
    num_letters, num_states: ``V`` and ``H`` (``H = V`` for ``enum``).
    sequence_length: letters per document; each document is exactly one sequence.
    seed: the language's seed (``random``/``markov_chain``); split ``i`` of ``SPLIT_NAMES`` is
      sampled with ``np.random.default_rng((seed, 1 + i))``.
    transition_concentration, emission_concentration: the Dirichlet concentrations
      (``emission_concentration`` is unused for ``enum``).
    train_sequences, validation_sequences, test_sequences: documents per split.
  """

  kind: str
  num_letters: int
  num_states: int
  sequence_length: int
  seed: int
  transition_concentration: float
  emission_concentration: float
  train_sequences: int
  validation_sequences: int
  test_sequences: int

  def __post_init__(self) -> None:
    if self.kind not in KINDS:
      raise ValueError(f"synthetic kind {self.kind!r} not in {KINDS}.")
    alphabet(self.num_letters)  # Raises for more letters than ALPHABET has.
    if self.kind == "enum" and self.num_states != self.num_letters:
      raise ValueError("an enumerable (visible Markov) language has num_states = num_letters.")
    if self.sequence_length < 1 or self.num_states < 1:
      raise ValueError(f"need sequence_length >= 1 and num_states >= 1, got "
                       f"{self.sequence_length}, {self.num_states}.")
    if min(self.train_sequences, self.validation_sequences, self.test_sequences) < 1:
      raise ValueError("every split needs at least one sequence.")

  def language(self) -> HiddenMarkovLanguage:
    """The language these settings name (built once per settings)."""
    return _language(self)

  def split_size(self, split: str) -> int:
    return {"train": self.train_sequences, "validation": self.validation_sequences,
            "test": self.test_sequences}[_check_split(split)]

  def sequences(self, split: str) -> np.ndarray:
    """``int32 [split_size, sequence_length]``: the split's letters, drawn with
    ``np.random.default_rng((seed, 1 + SPLIT_NAMES.index(split)))``."""
    rng = np.random.default_rng((self.seed, 1 + SPLIT_NAMES.index(_check_split(split))))
    return self.language().sample(rng, self.split_size(split), self.sequence_length)

  def documents(self, split: str) -> list[str]:
    """The split's sequences as text (``to_text``), one document each."""
    return to_text(self.sequences(split))  # type: ignore[return-value]

  def source_id(self) -> str:
    """Every setting (and the generator's version): a task's chunk-cache key."""
    return f"synthetic/1:{dataclasses.asdict(self)}"


def _check_split(split: str) -> str:
  if split not in SPLIT_NAMES:
    raise ValueError(f"unknown split {split!r}; expected one of {SPLIT_NAMES}.")
  return split


@functools.lru_cache(maxsize=16)
def _language(config: SyntheticConfig) -> HiddenMarkovLanguage:
  if config.kind == "enum":
    return HiddenMarkovLanguage.markov_chain(config.num_letters, config.seed,
                                             config.transition_concentration)
  return HiddenMarkovLanguage.random(config.num_states, config.num_letters, config.seed,
                                     config.transition_concentration,
                                     config.emission_concentration)
