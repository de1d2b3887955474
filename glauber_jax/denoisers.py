"""UL2's mixture of denoisers and the Glauber model's two formats, from one formatting code.

UL2 (Tay et al. 2022) pretrains on three paradigms, each announced by a mode token prepended to
the encoder input:

- R-denoisers (``[NLU]``): T5 span corruption, mean span 3 and 8, corruption rate 15%;
- X-denoisers (``[NLG]``): extreme corruption, spans 3 and 8 at 50%, span 64 at 15% and 50%;
- S-denoiser (``[S2S]``): prefix LM, the encoder reads a prefix and the decoder continues it.

One denoiser is ours, not UL2's: the I-denoiser (``[NLU]``, ``single_site``) masks exactly one
token, drawn uniformly over the chunk (site 0 included, which span corruption never masks), in
exactly the MASK-INFILL format the Glauber chain queries (``mask_infill``). Its rate is 0 by
default (UL2's mixture); ``ul2_denoisers.i_rate`` turns it on for a UL2 meant as a Glauber
teacher.

Span corruption replaces each noise span by a sentinel in the inputs; the targets list the
spans, each after its sentinel (T5's convention: every non-noise span of the targets becomes a
sentinel). The Glauber formats reuse exactly this: MASK-INFILL is span corruption with a single
noise span of length 1 (``mask_infill``), CAUSAL-GEN is the S-denoiser with the whole sequence
as the continuation (``causal_gen``). Those two take an array module ``xp`` so the same code
runs in NumPy data pipelines and inside jitted JAX programs.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import gin
import numpy as np

from glauber_jax import vocabularies

Vocabulary = vocabularies.Vocabulary
MODES = vocabularies.MODE_TOKENS


@dataclasses.dataclass(frozen=True)
class DenoiserConfig:
  """One UL2 denoiser.

  Attributes:
    name: a label for logs ("R3", "X64-50", "S").
    mode: the paradigm token prepended to the inputs.
    mean_span_length: mean noise span length (span denoisers).
    noise_density: fraction of the tokens corrupted (span denoisers).
    prefix_lm: True for the S-denoiser (no spans).
    single_site: True for the I-denoiser: one masked token, the MASK-INFILL format.
    rate: mixture weight (normalised over the mixture).
  """

  name: str
  mode: str
  mean_span_length: Optional[float] = None
  noise_density: Optional[float] = None
  prefix_lm: bool = False
  single_site: bool = False
  rate: float = 1.0

  def __post_init__(self) -> None:
    if not self.name:
      raise ValueError("a denoiser needs a name.")
    if self.mode not in MODES:
      raise ValueError(f"denoiser {self.name}: mode {self.mode!r} not in {MODES}.")
    if not (math.isfinite(self.rate) and self.rate >= 0):
      raise ValueError(f"denoiser {self.name}: rate must be finite and >= 0, got {self.rate}.")
    if self.single_site:
      if self.prefix_lm or self.mode != "[NLU]":
        raise ValueError(f"denoiser {self.name}: a single-site denoiser is MASK-INFILL, mode "
                         f"'[NLU]' and no prefix LM.")
      if self.mean_span_length is not None or self.noise_density is not None:
        raise ValueError(f"denoiser {self.name}: a single-site denoiser takes no "
                         "mean_span_length or noise_density.")
      return
    if self.prefix_lm:
      if self.mode != "[S2S]":
        raise ValueError(f"denoiser {self.name}: a prefix LM is UL2's S-denoiser, its mode is "
                         f"'[S2S]', got {self.mode!r}.")
      if self.mean_span_length is not None or self.noise_density is not None:
        raise ValueError(f"denoiser {self.name}: a prefix LM takes no mean_span_length or "
                         "noise_density.")
      return
    if self.mean_span_length is None or not self.mean_span_length >= 1:
      raise ValueError(f"denoiser {self.name}: mean_span_length must be >= 1, got "
                       f"{self.mean_span_length}.")
    if self.noise_density is None or not 0.0 < self.noise_density < 1.0:
      raise ValueError(f"denoiser {self.name}: noise_density must be in (0, 1), got "
                       f"{self.noise_density}.")


@gin.configurable
def ul2_denoisers(r_rate: float = 0.25, x_rate: float = 0.5, s_rate: float = 0.25,
                  i_rate: float = 0.0) -> tuple[DenoiserConfig, ...]:
  """UL2's seven denoisers, plus the single-site I-denoiser when ``i_rate > 0``; each
  paradigm's rate is split evenly among its denoisers.

  Defaults: the S-denoiser gets a quarter of the mixture and the six span denoisers share the
  rest equally (0.125 each, so R 0.25 and X 0.5). These weights are our choice, not numbers
  taken from the UL2 paper; set ``ul2_denoisers.r_rate`` / ``x_rate`` / ``s_rate`` in gin to
  change them (rates are normalised when sampling).
  """
  r = [DenoiserConfig(f"R{span}", "[NLU]", span, 0.15, rate=r_rate / 2) for span in (3, 8)]
  x = [DenoiserConfig(f"X{span}-{int(density * 100)}", "[NLG]", span, density, rate=x_rate / 4)
       for span, density in ((3, 0.5), (8, 0.5), (64, 0.15), (64, 0.5))]
  s = [DenoiserConfig("S", "[S2S]", prefix_lm=True, rate=s_rate)]
  i = [DenoiserConfig("I", "[NLU]", single_site=True, rate=i_rate)] if i_rate > 0 else []
  return tuple(r + x + s + i)


UL2_DENOISERS = ul2_denoisers()


# ---- Span corruption (NumPy, one example at a time) --------------------------------------------


def _num_noise_and_spans(length: int, noise_density: float, mean_span_length: float
                         ) -> tuple[int, int]:
  """T5's counts for a ``length``-token sequence: noise tokens and noise spans.

  Both are non-decreasing in ``length`` (so are ``length - num_noise`` and the number of
  sentinels), which makes the lengths of a chunk's example an upper bound for every shorter
  chunk. The span count is capped so that every noise and non-noise span is non-empty.
  """
  num_noise = min(max(int(round(length * noise_density)), 1), length - 1)
  num_spans = max(1, int(round(num_noise / mean_span_length)))
  return num_noise, min(num_spans, num_noise, length - num_noise)


def _random_segmentation(total: int, segments: int, rng: np.random.Generator) -> np.ndarray:
  """``segments`` positive lengths summing to ``total``, uniformly among such compositions."""
  cuts = np.sort(rng.choice(np.arange(1, total), size=segments - 1, replace=False))
  return np.diff(np.concatenate([[0], cuts, [total]]))


def random_spans_noise_mask(length: int, noise_density: float, mean_span_length: float,
                            rng: np.random.Generator) -> np.ndarray:
  """T5's noise mask: ``[length]`` bool, True on the noise tokens.

  ``num_noise = round(length * noise_density)`` (clipped to ``[1, length - 1]``) noise tokens
  in ``num_spans = max(1, round(num_noise / mean_span_length))`` spans. The noise tokens and the
  others are each cut into ``num_spans`` non-empty segments uniformly at random, and the
  segments alternate, non-noise first (so the mask starts with kept tokens and ends in noise).
  Needs ``length >= 2``.
  """
  if length < 2:
    raise ValueError(f"span corruption needs at least 2 tokens, got {length}.")
  num_noise, num_spans = _num_noise_and_spans(length, noise_density, mean_span_length)
  noise = _random_segmentation(num_noise, num_spans, rng)
  kept = _random_segmentation(length - num_noise, num_spans, rng)
  starts = np.cumsum(kept) + np.concatenate([[0], np.cumsum(noise)[:-1]])
  boundaries = np.zeros(length + 1, np.int32)
  np.add.at(boundaries, starts, 1)
  np.add.at(boundaries, starts + noise, -1)
  return np.cumsum(boundaries[:-1]) > 0


def noise_spans_to_sentinels(tokens: np.ndarray, noise_mask: np.ndarray, vocab: Vocabulary
                             ) -> tuple[np.ndarray, np.ndarray]:
  """``(inputs, targets)`` with T5's convention, numbered in order: the ``i``-th noise span
  becomes ``sentinel_id(i)`` in the inputs, the ``i``-th non-noise span ``sentinel_id(i)`` in
  the targets. For a mask that starts with kept tokens the targets read
  ``<s0> span_0 <s1> span_1 ...`` (with a trailing sentinel if the mask ends with kept tokens).
  More than ``NUM_SENTINELS`` spans raise ValueError.
  """
  tokens, noise_mask = np.asarray(tokens), np.asarray(noise_mask, bool)
  if tokens.shape != noise_mask.shape or tokens.ndim != 1:
    raise ValueError(f"tokens {tokens.shape} and noise_mask {noise_mask.shape} must be equal "
                     "1-D shapes.")

  def replace_spans(span_mask: np.ndarray) -> np.ndarray:
    starts = span_mask & ~np.concatenate([[False], span_mask[:-1]])
    if starts.sum() > vocabularies.NUM_SENTINELS:
      raise ValueError(f"{int(starts.sum())} spans exceed the {vocabularies.NUM_SENTINELS} "
                       "sentinels; use a shorter sequence or longer spans.")
    sentinels = vocab.sentinel_id(0) + 1 - np.cumsum(starts)  # Span i gets sentinel_id(i).
    return np.where(starts, sentinels, tokens)[~span_mask | starts].astype(np.int32)

  return replace_spans(noise_mask), replace_spans(~noise_mask)


def span_corruption(tokens: np.ndarray, rng: np.random.Generator, config: DenoiserConfig,
                    vocab: Vocabulary) -> tuple[np.ndarray, np.ndarray]:
  """An R- or X-denoiser example: ``([mode] + corrupted inputs, targets)``, no EOS."""
  if config.prefix_lm:
    raise ValueError(f"denoiser {config.name} is a prefix LM; use prefix_lm.")
  tokens = np.asarray(tokens)
  mask = random_spans_noise_mask(len(tokens), config.noise_density, config.mean_span_length, rng)
  inputs, targets = noise_spans_to_sentinels(tokens, mask, vocab)
  return np.concatenate([[vocab.mode_id(config.mode)], inputs]).astype(np.int32), targets


def prefix_lm(tokens: np.ndarray, rng: np.random.Generator, vocab: Vocabulary
              ) -> tuple[np.ndarray, np.ndarray]:
  """The S-denoiser: ``([S2S] + prefix, continuation)``, no EOS; the split is uniform in
  ``[0, len - 1]``, so the continuation is never empty.

  The empty prefix is included so the model learns unconditional CAUSAL-GEN, which the Glauber
  sampler starts from.
  """
  tokens = np.asarray(tokens)
  if len(tokens) < 1:
    raise ValueError("the prefix LM needs at least 1 token.")
  split = int(rng.integers(0, len(tokens)))
  inputs = np.concatenate([[vocab.mode_id("[S2S]")], tokens[:split]]).astype(np.int32)
  return inputs, tokens[split:].astype(np.int32)


def single_site_infill(tokens: np.ndarray, rng: np.random.Generator, vocab: Vocabulary
                       ) -> tuple[np.ndarray, np.ndarray]:
  """The I-denoiser: ``([NLU] x_{-k}, <s0> x_k)``, no EOS, with ``k`` uniform over the chunk:
  ``mask_infill``'s format, so the model is trained on exactly what the Glauber chain asks."""
  tokens = np.asarray(tokens)
  if len(tokens) < 1:
    raise ValueError("the single-site denoiser needs at least 1 token.")
  features = mask_infill(tokens, int(rng.integers(0, len(tokens))),
                         SpecialIds.from_vocabulary(vocab))
  return (features["encoder_input_tokens"][:-1].astype(np.int32),
          features["decoder_target_tokens"].astype(np.int32))


def max_example_lengths(config: DenoiserConfig, chunk_length: int) -> tuple[int, int]:
  """The largest ``(inputs, targets)`` lengths, mode token and EOS included, that ``config``
  makes from a chunk of ``chunk_length`` tokens or fewer.

  Span denoisers (exact for ``chunk_length`` tokens): inputs are the mode, the kept tokens, one
  sentinel per noise span and EOS; targets are one sentinel per kept span (as many as noise
  spans, since the mask ends in noise), the noise tokens and EOS. Prefix LM: the longest prefix
  is ``chunk_length - 1`` tokens and the longest continuation ``chunk_length``.
  """
  if config.prefix_lm:
    return chunk_length + 1, chunk_length + 1
  if config.single_site:  # [NLU] x_{-k} EOS and <s0> x_k EOS.
    return chunk_length + 2, 3
  num_noise, num_spans = _num_noise_and_spans(chunk_length, config.noise_density,
                                              config.mean_span_length)
  return 1 + chunk_length - num_noise + num_spans + 1, num_spans + num_noise + 1


def check_lengths(denoisers: Sequence[DenoiserConfig], chunk_length: int, inputs_length: int,
                  targets_length: int) -> None:
  """Raises a clear ValueError unless every denoiser with a positive rate turns any chunk of at
  most ``chunk_length`` tokens into an example that fits the feature lengths."""
  if chunk_length < 2:
    raise ValueError(f"chunk_length must be >= 2 (span corruption), got {chunk_length}.")
  for config in denoisers:
    if config.rate == 0:
      continue
    if not (config.prefix_lm or config.single_site):
      _, num_spans = _num_noise_and_spans(chunk_length, config.noise_density,
                                          config.mean_span_length)
      if num_spans > vocabularies.NUM_SENTINELS:
        raise ValueError(
            f"sequence length too small for the denoiser settings: denoiser {config.name} makes "
            f"{num_spans} spans of a {chunk_length}-token chunk, more than the "
            f"{vocabularies.NUM_SENTINELS} sentinels; use shorter chunks (smaller "
            "TASK_FEATURE_LENGTHS) or longer spans.")
    need_inputs, need_targets = max_example_lengths(config, chunk_length)
    if need_inputs > inputs_length or need_targets > targets_length:
      raise ValueError(
          f"sequence length too small for the denoiser settings: denoiser {config.name} on "
          f"{chunk_length}-token chunks needs inputs {need_inputs} and targets {need_targets}, "
          f"but TASK_FEATURE_LENGTHS gives inputs {inputs_length} and targets {targets_length}; "
          "raise them or use shorter chunks.")


def largest_chunk_length(denoisers: Sequence[DenoiserConfig], inputs_length: int,
                         targets_length: int) -> int:
  """The longest chunk every denoiser fits into the feature lengths (raises if none).

  The needed lengths grow with the chunk (``_num_noise_and_spans``), so the first chunk that
  does not fit ends the search.
  """
  check_lengths(denoisers, 2, inputs_length, targets_length)  # Raises the explanation.
  best = 2
  while True:
    try:
      check_lengths(denoisers, best + 1, inputs_length, targets_length)
    except ValueError:
      return best
    best += 1


def _pad(ids: np.ndarray, length: int) -> np.ndarray:
  return np.pad(ids, (0, length - len(ids))).astype(np.int32)


def encoder_decoder_features(inputs: np.ndarray, targets: np.ndarray, inputs_length: int,
                             targets_length: int) -> dict[str, np.ndarray]:
  """T5X features with EOS appended and PAD to the lengths; ValueError if they do not fit.

  ``encoder_input_tokens [inputs_length]``, ``decoder_target_tokens [targets_length]``,
  ``decoder_input_tokens`` (the targets shifted right, PAD as the start token) and
  ``decoder_loss_weights`` (float32, 1 on the real targets, EOS included).
  """
  inputs = np.concatenate([inputs, [vocabularies.EOS_ID]])
  targets = np.concatenate([targets, [vocabularies.EOS_ID]])
  if len(inputs) > inputs_length or len(targets) > targets_length:
    raise ValueError(f"example needs inputs {len(inputs)} / targets {len(targets)} tokens "
                     f"(EOS included), lengths given are {inputs_length} / {targets_length}.")
  decoder_targets = _pad(targets, targets_length)
  return {
      "encoder_input_tokens": _pad(inputs, inputs_length),
      "decoder_input_tokens": np.concatenate([[vocabularies.PAD_ID],
                                              decoder_targets[:-1]]).astype(np.int32),
      "decoder_target_tokens": decoder_targets,
      "decoder_loss_weights": (np.arange(targets_length) < len(targets)).astype(np.float32),
  }


def ul2_example(tokens: np.ndarray, rng: np.random.Generator,
                denoisers: Sequence[DenoiserConfig], vocab: Vocabulary, inputs_length: int,
                targets_length: int) -> dict[str, np.ndarray]:
  """One mixture-of-denoisers example: a denoiser drawn by rate, then its T5X features
  (``encoder_decoder_features``). Raises ValueError naming the denoiser if it does not fit."""
  rates = np.asarray([d.rate for d in denoisers], np.float64)
  if not len(rates) or rates.sum() <= 0:
    raise ValueError("ul2_example needs at least one denoiser with a positive rate.")
  config = denoisers[int(rng.choice(len(denoisers), p=rates / rates.sum()))]
  tokens = np.asarray(tokens, np.int32)
  try:
    if config.prefix_lm:
      inputs, targets = prefix_lm(tokens, rng, vocab)
    elif config.single_site:
      inputs, targets = single_site_infill(tokens, rng, vocab)
    else:
      inputs, targets = span_corruption(tokens, rng, config, vocab)
    return encoder_decoder_features(inputs, targets, inputs_length, targets_length)
  except ValueError as error:
    raise ValueError(f"denoiser {config.name}: {error}") from None


# ---- The Glauber formats (NumPy or jax.numpy) --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SpecialIds:
  """The ids the Glauber formats write, as plain ints (usable inside jitted code)."""

  pad: int
  eos: int
  mask: int
  nlu: int
  nlg: int
  s2s: int

  @classmethod
  def from_vocabulary(cls, vocab: Vocabulary) -> SpecialIds:
    """The ids of ``vocab``; ``mask`` is its first sentinel, ``<extra_id_0>``."""
    return cls(pad=vocab.pad_id, eos=vocab.eos_id, mask=vocab.sentinel_id(0),
               nlu=vocab.mode_id("[NLU]"), nlg=vocab.mode_id("[NLG]"),
               s2s=vocab.mode_id("[S2S]"))


def _column(value: int, like: Any, xp: Any) -> Any:
  return xp.full(like.shape[:-1] + (1,), value, like.dtype)


def mask_infill(tokens: Any, site: Any, ids: SpecialIds, xp: Any = np) -> dict[str, Any]:
  """MASK-INFILL of ``tokens [..., L]`` at ``site [...]``: the R-denoiser format with one
  noise span of length 1.

  Returns ``encoder_input_tokens [..., L + 2]`` (``[NLU] x_{-k} [EOS]``, site ``k`` holding
  sentinel 0), ``decoder_input_tokens [..., 2]`` (``[start, sentinel_0]``) and
  ``decoder_target_tokens [..., 2]`` (``[sentinel_0, x_k]``); the model's distribution of
  ``x_k`` is its output at decoder position 1. ``site`` broadcasts against the leading axes
  and may be traced under ``jax.jit`` (``xp=jax.numpy``).

  For ``0 < k`` the encoder input is exactly ``span_corruption``'s for a single noise span
  ``[k]`` with EOS appended, and the decoder targets begin as its targets do.
  """
  tokens = xp.asarray(tokens)
  site = xp.broadcast_to(xp.asarray(site), tokens.shape[:-1])[..., None]
  positions = xp.arange(tokens.shape[-1])
  masked = xp.where(positions == site, ids.mask, tokens)
  value = xp.take_along_axis(tokens, site, axis=-1)
  return {
      "encoder_input_tokens": infill_context(masked, ids, xp),
      "decoder_input_tokens": xp.concatenate(
          [_column(ids.pad, tokens, xp), _column(ids.mask, tokens, xp)], axis=-1),
      "decoder_target_tokens": xp.concatenate([_column(ids.mask, tokens, xp), value], axis=-1),
  }


def infill_context(tokens: Any, ids: SpecialIds, xp: Any = np) -> Any:
  """MASK-INFILL's encoder input with no site masked, ``[NLU] x [EOS]`` for ``tokens [..., L]``.

  The cloze read-out (``encoder_decoder.Transformer.cloze``) reads every site of it at once: site
  ``k``'s read-out never sees position ``k``, so it equals its read-out of ``mask_infill`` at
  ``k``.
  """
  tokens = xp.asarray(tokens)
  return xp.concatenate([_column(ids.nlu, tokens, xp), tokens, _column(ids.eos, tokens, xp)],
                        axis=-1)


def causal_gen(prefix: Any, ids: SpecialIds, xp: Any = np) -> dict[str, Any]:
  """CAUSAL-GEN's encoder input ``[S2S] prefix [EOS]`` for ``prefix [..., P]`` (P may be 0):
  the S-denoiser's inputs (``prefix_lm``) with EOS appended."""
  prefix = xp.asarray(prefix)
  return {"encoder_input_tokens": xp.concatenate(
      [_column(ids.s2s, prefix, xp), prefix, _column(ids.eos, prefix, xp)], axis=-1)}
