"""FLOP counts, accelerator peaks and model-FLOPs utilisation (MFU).

MFU = model FLOPs per second / (peak FLOP/s per device x devices), with model FLOPs counted as
6 x (matmul parameters touched per token) x tokens plus attention products, encoder and decoder
each with their own token counts (the MaxText convention). Peaks are dense bf16 figures from the
vendors' data sheets; a run can override them in gin (``train.peak_flops_per_device``).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from glauber_jax import network

#: Dense bf16 peak FLOP/s by substring of ``jax.Device.device_kind``.
PEAK_BF16_FLOPS = {
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5p": 459e12,
    "TPU v6": 918e12,
}


def peak_flops_per_device(device: Optional[jax.Device] = None) -> Optional[float]:
  """The table's peak for ``device`` (default: the first device), or None if unknown."""
  kind = (device or jax.devices()[0]).device_kind
  for name, flops in PEAK_BF16_FLOPS.items():
    if name.lower() in kind.lower():
      return flops
  return None


def mfu(flops_per_second: float, peak_per_device: Optional[float],
        num_devices: int) -> Optional[float]:
  if not peak_per_device:
    return None
  return flops_per_second / (peak_per_device * num_devices)


def encoder_decoder_training_flops(config: network.NetworkConfig, encoder_length: int,
                               decoder_length: int) -> float:
  """Forward + backward FLOPs for one example (6 x params touched x tokens, plus attention).

  Matmul parameters only (embedding lookups are free; the output head is a matmul). Attention
  score and value products add ``2 * 2 * Tq * Tk * heads * head_dim`` per layer forward,
  tripled for training.
  """
  d, f, h = config.d_model, config.d_ff, config.num_heads * config.head_dim
  attention_params = 4 * d * h
  mlp_params = 3 * d * f
  encoder_params = config.num_encoder_layers * (attention_params + mlp_params)
  decoder_params = config.num_decoder_layers * (2 * attention_params + mlp_params)
  head_params = d * config.vocab_size
  dense = 6 * (encoder_params * encoder_length + (decoder_params + head_params) * decoder_length)
  attention = 3 * 4 * h * (
      config.num_encoder_layers * encoder_length ** 2
      + config.num_decoder_layers * (decoder_length ** 2 / 2 + decoder_length * encoder_length))
  return float(dense + attention)


def single_stack_training_flops(config: network.NetworkConfig, length: int) -> float:
  """``encoder_decoder_training_flops`` of a single stack (``glauber_jax.single_stack``) of
  ``length`` tokens: its ``num_encoder_layers`` blocks with full attention, and the output head.
  """
  return encoder_decoder_training_flops(dataclasses.replace(config, num_decoder_layers=0),
                                        length, length)
