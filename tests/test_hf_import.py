"""Parity of ``hf_import`` with Hugging Face's T5, and its errors on bad directories.

A small randomly initialised ``T5ForConditionalGeneration`` is saved locally (nothing is
downloaded), converted, and our network's logits are compared with Hugging Face's.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Callable

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
safetensors_numpy = pytest.importorskip("safetensors.numpy")

from glauber_jax import checkpoints, encoder_decoder, hf_import, network  # noqa: E402

VOCAB = 128
TOLERANCE = 1e-4
# Small enough to exercise T5's exact, logarithmic and clamped position buckets below.
MAX_DISTANCE = 20


def _hf_model(tied: bool, seed: int = 0) -> Any:
  """A random T5 v1.1-style model; ``tied`` gives the v1.0 tied, rescaled output head."""
  config = transformers.T5Config(
      vocab_size=VOCAB, d_model=64, d_kv=16, num_heads=4, d_ff=96, num_layers=2,
      num_decoder_layers=2, feed_forward_proj="gated-gelu", tie_word_embeddings=tied,
      relative_attention_max_distance=MAX_DISTANCE, dropout_rate=0.0)
  torch.manual_seed(seed)
  model = transformers.T5ForConditionalGeneration(config).eval()
  with torch.no_grad():
    # Norm scales start at one; randomise them so that a misplaced norm shows.
    for name, parameter in model.named_parameters():
      if name.endswith("layer_norm.weight"):
        parameter.uniform_(0.5, 1.5)
    if not tied:
      # transformers >= 5 ties the head whatever the config says; Flan-T5's is separate.
      model.lm_head.weight = torch.nn.Parameter(torch.randn(VOCAB, config.d_model))
  return model


def _save(model: Any, directory: str, layout: str) -> None:
  if layout == "sharded":
    model.save_pretrained(directory, max_shard_size="100KB")
    assert os.path.isfile(os.path.join(directory, "model.safetensors.index.json"))
  elif layout == "torch_bin":
    model.save_pretrained(directory)
    os.remove(os.path.join(directory, "model.safetensors"))
    torch.save(model.state_dict(), os.path.join(directory, "pytorch_model.bin"))
  else:
    model.save_pretrained(directory)


def _inputs() -> tuple[np.ndarray, np.ndarray]:
  """Encoder tokens padded at the end, and decoder inputs starting with 0."""
  rng = np.random.default_rng(0)
  encoder = rng.integers(1, VOCAB, (2, 24))
  encoder[0, -6:] = 0
  encoder[1, -1:] = 0
  decoder = rng.integers(1, VOCAB, (2, 22))
  decoder[:, 0] = 0
  return encoder, decoder


def _hf_logits(model: Any, encoder: np.ndarray, decoder: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(input_ids=torch.tensor(encoder), attention_mask=torch.tensor(encoder != 0),
                 decoder_input_ids=torch.tensor(decoder)).logits.numpy()


def _our_logits(config: network.NetworkConfig, params: dict[str, Any], encoder: np.ndarray,
                decoder: np.ndarray) -> np.ndarray:
  return np.asarray(encoder_decoder.Transformer(config).apply(
      {"params": params}, jnp.asarray(encoder, jnp.int32), jnp.asarray(decoder, jnp.int32)))


@pytest.mark.parametrize("tied,layout", [(False, "single"), (False, "sharded"),
                                         (False, "torch_bin"), (True, "single")])
def test_logits_match_hugging_face(tmp_path, tied, layout):
  model = _hf_model(tied)
  _save(model, str(tmp_path), layout)
  config, params = hf_import.load_hf_params(str(tmp_path), dtype="float32")
  assert config.relative_attention_max_distance == MAX_DISTANCE
  assert all(leaf.dtype == np.float32 for leaf in jax.tree.leaves(params))
  encoder, decoder = _inputs()
  difference = np.abs(_our_logits(config, params, encoder, decoder)
                      - _hf_logits(model, encoder, decoder))
  assert difference.max() < TOLERANCE, f"max |logit difference| = {difference.max()}"


def test_cli_writes_a_loadable_checkpoint_and_gin(tmp_path, capsys):
  hf_dir, out = str(tmp_path / "hf"), str(tmp_path / "converted")
  _save(_hf_model(tied=False), hf_dir, "single")
  hf_import.main([f"--hf_dir={hf_dir}", f"--output_dir={out}"])
  assert "train.initial_checkpoint" in capsys.readouterr().out

  config, params = hf_import.load_hf_params(hf_dir)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
                          params)
  restored = checkpoints.load_params(out, abstract)
  jax.tree.map(np.testing.assert_array_equal, restored, params)

  try:
    gin.parse_config_file(os.path.join(out, hf_import.GIN_FILE), skip_unknown=True)
    assert network.NetworkConfig() == config
  finally:
    gin.clear_config()

  with pytest.raises(SystemExit, match="--overwrite"):
    hf_import.main([f"--hf_dir={hf_dir}", f"--output_dir={out}"])


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> str:
  directory = str(tmp_path_factory.mktemp("t5"))
  _save(_hf_model(tied=False), directory, "single")
  return directory


def _edit_config(**changes: Any) -> Callable[[str], None]:
  def edit(directory: str) -> None:
    path = os.path.join(directory, "config.json")
    with open(path) as f:
      config = json.load(f)
    with open(path, "w") as f:
      json.dump({**config, **changes}, f)
  return edit


def _truncate_weights(directory: str) -> None:
  path = os.path.join(directory, "model.safetensors")
  os.truncate(path, os.path.getsize(path) // 2)


def _drop_tensor(directory: str) -> None:
  path = os.path.join(directory, "model.safetensors")
  tensors = safetensors_numpy.load_file(path)
  del tensors["encoder.final_layer_norm.weight"]
  safetensors_numpy.save_file(tensors, path)


def _bin_without_torch(directory: str) -> None:
  os.replace(os.path.join(directory, "model.safetensors"),
             os.path.join(directory, "pytorch_model.bin"))


@pytest.mark.parametrize("corrupt,message", [
    (lambda d: os.remove(os.path.join(d, "config.json")), "no config.json"),
    (lambda d: os.remove(os.path.join(d, "model.safetensors")), "has no weights"),
    (_edit_config(d_ff=80), r"DenseReluDense.wi_0.weight has shape \(96, 64\)"),
    (_edit_config(num_layers=3), "missing tensor encoder.block.2"),
    (_edit_config(feed_forward_proj="relu"), r"feed_forward_proj='relu' is not supported"),
    (_truncate_weights, "corrupt or truncated"),
    (_drop_tensor, "missing tensor encoder.final_layer_norm.weight"),
    (_bin_without_torch, "needs torch"),
], ids=["no_config", "no_weights", "config_mismatch", "layer_count_mismatch", "relu_t5_v1_0",
        "truncated", "missing_tensor", "bin_without_torch"])
def test_rejects_bad_directory(tmp_path, monkeypatch, saved_model, corrupt, message):
  directory = str(tmp_path / "model")
  shutil.copytree(saved_model, directory)
  corrupt(directory)
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` fails inside the importer.
  with pytest.raises(hf_import.HfImportError, match=message):
    hf_import.load_hf_params(directory)


def test_config_overrides_and_defaults(saved_model):
  with open(os.path.join(saved_model, "config.json")) as f:
    hf_config = json.load(f)
  config = hf_import.network_config_from_hf(hf_config, dtype="float32", max_encoder_length=32)
  expected = network.NetworkConfig(
      vocab_size=VOCAB, d_model=64, num_heads=4, head_dim=16, d_ff=96, num_encoder_layers=2,
      num_decoder_layers=2, relative_attention_max_distance=MAX_DISTANCE, dropout_rate=0.0,
      dtype="float32", max_encoder_length=32)
  assert config == expected
  with pytest.raises(hf_import.HfImportError, match="relative"):
    hf_import.network_config_from_hf(hf_config, position_scheme="rope")
