"""Small deterministic fixtures shared by the training tests (no data files needed)."""

from __future__ import annotations

from typing import Any

import numpy as np

from glauber_jax import denoiser_networks, models, network
from glauber_jax.processes import absorbing_process, glauber_process

TINY_NETWORK = network.NetworkConfig(
    vocab_size=64, d_model=32, num_heads=4, head_dim=8, d_ff=48, num_encoder_layers=2,
    num_decoder_layers=2, dtype="float32", max_encoder_length=16, max_decoder_length=8)


class SyntheticBatches:
  """Random encoder-decoder batches, a pure function of the batch index: exactly resumable."""

  def __init__(self, batch_size: int, inputs_length: int = 16, targets_length: int = 8,
               vocab_size: int = 64, seed: int = 0) -> None:
    self.batch_size, self.inputs_length, self.targets_length = (batch_size, inputs_length,
                                                                targets_length)
    self.vocab_size, self.seed, self.index = vocab_size, seed, 0

  def __iter__(self) -> "SyntheticBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    rng = np.random.default_rng((self.seed, self.index))
    self.index += 1
    encoder = rng.integers(3, self.vocab_size, (self.batch_size, self.inputs_length))
    targets = rng.integers(3, self.vocab_size, (self.batch_size, self.targets_length))
    # A learnable rule: the target copies the first encoder tokens.
    targets[:, : self.targets_length // 2] = encoder[:, : self.targets_length // 2]
    decoder_inputs = np.concatenate([np.zeros((self.batch_size, 1)), targets[:, :-1]], axis=1)
    return {
        "encoder_input_tokens": encoder.astype(np.int32),
        "decoder_input_tokens": decoder_inputs.astype(np.int32),
        "decoder_target_tokens": targets.astype(np.int32),
        "decoder_loss_weights": np.ones(targets.shape, np.float32),
    }

  def get_state(self) -> dict[str, Any]:
    return {"index": self.index}

  def set_state(self, state: dict[str, Any]) -> None:
    self.index = int(state["index"])

  def input_shapes(self) -> dict[str, tuple[int, int]]:
    batch = next(SyntheticBatches(self.batch_size, self.inputs_length, self.targets_length))
    return {name: value.shape for name, value in batch.items()}


def glauber_dit(network_config: Any, vocabulary: Any, seq_len: int,
                text_includes_eos: bool = True, **process_settings: Any
                ) -> models.DiffusionModel:
  """``models.DiffusionModel`` of the time-conditioned UL2 on the Glauber process."""
  return models.DiffusionModel(
      denoiser_networks.EncoderDecoderDenoiser(network_config, vocabulary, text_includes_eos),
      glauber_process.GlauberProcess(seq_len, **process_settings))


def mdlm(network_config: Any, vocabulary: Any, seq_len: int, **process_settings: Any
         ) -> models.DiffusionModel:
  """``models.DiffusionModel`` of a bidirectional single stack on the absorbing process."""
  return models.DiffusionModel(denoiser_networks.SingleStackDenoiser(network_config, vocabulary),
                               absorbing_process.AbsorbingProcess(seq_len, **process_settings))
