r"""Imports Hugging Face T5 v1.1 / Flan-T5 weights into ``glauber_jax.network``.

``python -m glauber_jax.hf_import --hf_dir=DIR --output_dir=OUT`` reads a local Hugging Face
model directory (``config.json`` plus ``model.safetensors`` or ``pytorch_model.bin``, either one
possibly sharded with an ``*.index.json``), converts the weights to this library's parameter
tree, writes ``{"params": params}`` as an orbax checkpoint at ``OUT`` and the matching gin
bindings to ``OUT/network.gin``. Start a run from it with ``train.initial_checkpoint = 'OUT'``.
Nothing is downloaded.

Supported: ``model_type`` t5 or mt5 with a gated-GELU feed-forward (T5 v1.1, Flan-T5, mT5).
The output head may be untied (v1.1) or tied to the embedding with HF's ``d_model ** -0.5``
rescaling of the decoder output (v1.0 style); the rescaling is folded into ``logits_dense``,
which is always a separate matrix here. Not supported, with an ``HfImportError`` saying so: the
ReLU feed-forward of the original T5 (``feed_forward_proj="relu"``), other activations,
per-layer relative biases (umT5) and a padding id other than 0 (the network masks id 0).

Python API: ``load_hf_params(hf_dir) -> (NetworkConfig, params)`` and
``network_config_from_hf(config_dict, **overrides) -> NetworkConfig``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  Registers numpy's "bfloat16", so bf16 safetensors load as numpy.
import numpy as np
import orbax.checkpoint as ocp

from glauber_jax import encoder_decoder, network

Params = dict[str, Any]

CONFIG_FILE = "config.json"
SAFETENSORS_FILE = "model.safetensors"
TORCH_FILE = "pytorch_model.bin"
INDEX_SUFFIX = ".index.json"
GIN_FILE = "network.gin"

SUPPORTED_MODEL_TYPES = ("t5", "mt5")
#: ``feed_forward_proj`` values whose activation is the tanh-approximated GELU of the network.
GATED_GELU_PROJECTIONS = ("gated-gelu", "gated-gelu_new", "gated-gelu_pytorch_tanh")
#: Copies of ``shared.weight`` that T5 checkpoints may carry; they must equal it.
EMBEDDING_COPIES = ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight")
#: Present in some old checkpoints and never loaded by Hugging Face's T5 either.
IGNORED_TENSORS = ("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight",)
#: NetworkConfig fields that the converted weights fix, written to the gin snippet.
GIN_FIELDS = ("vocab_size", "d_model", "num_heads", "head_dim", "d_ff", "num_encoder_layers",
              "num_decoder_layers", "position_scheme", "relative_attention_num_buckets",
              "relative_attention_max_distance", "layer_norm_epsilon", "dropout_rate")
_MAX_LISTED_PROBLEMS = 20


class HfImportError(ValueError):
  """The directory is not a T5 checkpoint this network can load; the message says why."""


def read_hf_config(hf_dir: str) -> dict[str, Any]:
  """Returns the parsed ``config.json`` of the Hugging Face model directory ``hf_dir``."""
  if not os.path.isdir(hf_dir):
    raise HfImportError(f"{hf_dir!r} is not a directory.")
  path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise HfImportError(f"{hf_dir!r} has no {CONFIG_FILE}: not a Hugging Face model directory "
                        f"(it holds {sorted(os.listdir(hf_dir))}).")
  try:
    with open(path) as f:
      config = json.load(f)
  except (OSError, json.JSONDecodeError) as error:
    raise HfImportError(f"cannot parse {path}: {error}") from error
  if not isinstance(config, dict):
    raise HfImportError(f"{path} holds a {type(config).__name__}, not a JSON object.")
  return config


def network_config_from_hf(hf_config: Mapping[str, Any], **overrides: Any
                           ) -> network.NetworkConfig:
  """The ``NetworkConfig`` of a Hugging Face T5 v1.1 / Flan-T5 / mT5 ``config.json``.

  Args:
    hf_config: the parsed ``config.json``. Optional keys take Hugging Face's ``T5Config``
      defaults; ``dropout_rate`` is carried over as the model's training dropout.
    **overrides: other ``NetworkConfig`` fields (``dtype``, ``max_encoder_length``, ...) or
      replacements of the converted ones.

  Raises:
    HfImportError: for a model the network cannot represent (see the module docstring).
  """
  model_type = hf_config.get("model_type")
  if model_type not in SUPPORTED_MODEL_TYPES:
    raise HfImportError(f"model_type={model_type!r} is not supported; expected one of "
                        f"{SUPPORTED_MODEL_TYPES} (T5 v1.1, Flan-T5, mT5).")
  projection = hf_config.get("feed_forward_proj", "relu")
  if projection not in GATED_GELU_PROJECTIONS:
    raise HfImportError(
        f"feed_forward_proj={projection!r} is not supported: glauber_jax.network has only the "
        f"gated-GELU MLP of T5 v1.1 / Flan-T5 ({', '.join(GATED_GELU_PROJECTIONS)}); the "
        "original T5 (v1.0, 'relu') cannot be loaded.")
  pad_token_id = hf_config.get("pad_token_id", 0)
  if pad_token_id != 0:
    raise HfImportError(f"pad_token_id={pad_token_id}: the network treats token 0 as padding.")
  if overrides.get("position_scheme", "relative") != "relative":
    raise HfImportError("T5 weights need position_scheme='relative'.")
  try:
    num_layers = int(hf_config["num_layers"])
    decoder_layers = hf_config.get("num_decoder_layers")
    fields = {
        "vocab_size": int(hf_config["vocab_size"]),
        "d_model": int(hf_config["d_model"]),
        "num_heads": int(hf_config["num_heads"]),
        "head_dim": int(hf_config["d_kv"]),
        "d_ff": int(hf_config["d_ff"]),
        "num_encoder_layers": num_layers,
        "num_decoder_layers": num_layers if decoder_layers is None else int(decoder_layers),
        "position_scheme": "relative",
        "relative_attention_num_buckets": int(hf_config.get("relative_attention_num_buckets", 32)),
        "relative_attention_max_distance": int(
            hf_config.get("relative_attention_max_distance", 128)),
        "layer_norm_epsilon": float(hf_config.get("layer_norm_epsilon", 1e-6)),
        "dropout_rate": float(hf_config.get("dropout_rate", 0.1)),
    }
  except KeyError as missing:
    raise HfImportError(f"the T5 config lacks the key {missing}.") from None
  except (TypeError, ValueError) as error:
    raise HfImportError(f"the T5 config has a malformed value: {error}") from error
  return network.NetworkConfig(**{**fields, **overrides})


def _head_scale(hf_config: Mapping[str, Any], d_model: int) -> float:
  """The factor Hugging Face's T5 applies to the decoder output before the LM head.

  The original T5 (tied head) multiplies by ``d_model ** -0.5``; v1.1 / Flan-T5 (untied) does
  not. transformers < 5 reads this from ``tie_word_embeddings``; transformers >= 5 always ties
  in the config and records the choice as ``scale_decoder_outputs``.
  """
  untied = hf_config.get("tie_word_embeddings", True) is False
  scaled = hf_config.get("scale_decoder_outputs", not untied)
  return d_model ** -0.5 if scaled else 1.0


def _weight_files(hf_dir: str) -> list[str]:
  """The weight files of ``hf_dir``: safetensors preferred, a sharded index expanded."""
  for name in (SAFETENSORS_FILE, TORCH_FILE):
    single = os.path.join(hf_dir, name)
    if os.path.isfile(single):
      return [single]
    index = single + INDEX_SUFFIX
    if os.path.isfile(index):
      return _index_shards(index)
  raise HfImportError(
      f"{hf_dir!r} has no weights: expected {SAFETENSORS_FILE}, {TORCH_FILE} or their "
      f"{INDEX_SUFFIX} (it holds {sorted(os.listdir(hf_dir))}).")


def _index_shards(index_path: str) -> list[str]:
  try:
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map")
  except (OSError, json.JSONDecodeError, AttributeError) as error:
    raise HfImportError(f"cannot parse the shard index {index_path}: {error}") from error
  if not isinstance(weight_map, dict) or not weight_map:
    raise HfImportError(f"{index_path} has no 'weight_map' of tensor names to shard files.")
  directory = os.path.dirname(index_path)
  shards = [os.path.join(directory, name) for name in sorted(set(weight_map.values()))]
  missing = [path for path in shards if not os.path.isfile(path)]
  if missing:
    raise HfImportError(f"{index_path} names shards that are absent: {missing}.")
  return shards


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors import SafetensorError, safe_open
  except ImportError as error:
    raise HfImportError(f"reading {path} needs the safetensors package "
                        "(pip install safetensors).") from error
  try:
    with safe_open(path, framework="numpy") as f:
      return {name: f.get_tensor(name).astype(np.float32, copy=False) for name in f.keys()}
  except (SafetensorError, OSError, TypeError) as error:
    raise HfImportError(f"cannot read {path} (corrupt or truncated?): {error}") from error


def _read_torch(path: str) -> dict[str, np.ndarray]:
  try:
    import torch
  except ImportError as error:
    raise HfImportError(
        f"{path} is a PyTorch pickle and reading it needs torch, which is not installed; "
        "install torch or use a safetensors copy of the model.") from error
  try:
    state = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch raises many types for unreadable pickles.
    raise HfImportError(f"cannot read {path} (corrupt or truncated?): {error}") from error
  if not isinstance(state, Mapping) or not all(
      isinstance(value, torch.Tensor) for value in state.values()):
    raise HfImportError(f"{path} does not hold a state dict of tensors.")
  return {name: tensor.detach().float().numpy() for name, tensor in state.items()}


def read_hf_tensors(hf_dir: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint in ``hf_dir``, by Hugging Face name, as float32 numpy."""
  tensors: dict[str, np.ndarray] = {}
  for path in _weight_files(hf_dir):
    shard = _read_safetensors(path) if path.endswith(".safetensors") else _read_torch(path)
    repeated = sorted(tensors.keys() & shard.keys())
    if repeated:
      raise HfImportError(f"{path} repeats tensors of an earlier shard: {repeated[:5]}.")
    tensors.update(shard)
  return tensors


class _TensorTaker:
  """Hands out checkpoint tensors by name with their expected shapes, collecting every problem.

  Tensors are popped from the given dict, so its arrays are freed as they are converted. A
  missing or misshapen tensor is recorded and replaced by zeros so that one pass reports all
  problems; ``raise_problems`` then fails before any of those placeholders can be used.
  """

  def __init__(self, tensors: dict[str, np.ndarray], source: str) -> None:
    self._tensors = tensors
    self._source = source
    self.problems: list[str] = []

  def has(self, name: str) -> bool:
    return name in self._tensors

  def take(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
    value = self._tensors.pop(name, None)
    if value is None:
      self.problems.append(f"missing tensor {name} {shape}")
      return np.zeros(shape, np.float32)
    if value.shape != shape:
      self.problems.append(f"{name} has shape {value.shape}, the config implies {shape}")
      return np.zeros(shape, np.float32)
    return value

  def take_optional(self, name: str) -> Optional[np.ndarray]:
    return self._tensors.pop(name, None)

  def raise_problems(self) -> None:
    problems = self.problems + [f"unexpected tensor {name} {self._tensors[name].shape}"
                                for name in sorted(self._tensors)]
    if not problems:
      return
    listed = problems[:_MAX_LISTED_PROBLEMS]
    if len(problems) > len(listed):
      listed.append(f"... and {len(problems) - len(listed)} more")
    raise HfImportError(
        f"the weights in {self._source} do not match its {CONFIG_FILE} as a T5 v1.1 "
        "encoder-decoder:\n  " + "\n  ".join(listed))


def _kernel(weight: np.ndarray, *shape: int) -> np.ndarray:
  """A torch ``Linear`` weight ``[out, in]`` as a flax kernel ``[in, out]`` reshaped to ``shape``."""
  return np.ascontiguousarray(weight.T).reshape(shape)


def convert_hf_tensors(tensors: dict[str, np.ndarray], hf_config: Mapping[str, Any],
                       config: network.NetworkConfig, source: str = "the checkpoint") -> Params:
  """Maps Hugging Face T5 tensors onto the parameter tree of ``encoder_decoder.Transformer``.

  Args:
    tensors: float32 arrays by Hugging Face name (``read_hf_tensors``); emptied as they are
      converted, so that peak memory stays near one copy of the model.
    hf_config: the parsed ``config.json`` (decides the output head's scaling).
    config: the network's configuration (``network_config_from_hf``).
    source: what to name in error messages.

  Returns:
    The unboxed ``params`` tree (without time conditioning), float32 numpy arrays.

  Raises:
    HfImportError: listing every missing, misshapen or unexpected tensor.
  """
  taker = _TensorTaker(tensors, source)
  d, heads, kv, ff = config.d_model, config.num_heads, config.head_dim, config.d_ff

  def attention(prefix: str) -> Params:
    return {
        **{ours: {"kernel": _kernel(taker.take(f"{prefix}.{theirs}.weight", (heads * kv, d)),
                                    d, heads, kv)}
           for ours, theirs in (("query", "q"), ("key", "k"), ("value", "v"))},
        "out": {"kernel": _kernel(taker.take(f"{prefix}.o.weight", (d, heads * kv)),
                                  heads, kv, d)},
    }

  def mlp(prefix: str) -> Params:
    return {
        "wi_0": {"kernel": _kernel(taker.take(f"{prefix}.wi_0.weight", (ff, d)), d, ff)},
        "wi_1": {"kernel": _kernel(taker.take(f"{prefix}.wi_1.weight", (ff, d)), d, ff)},
        "wo": {"kernel": _kernel(taker.take(f"{prefix}.wo.weight", (d, ff)), ff, d)},
    }

  def norm(name: str) -> Params:
    return {"scale": taker.take(name, (d,))}

  def position_bias(stack: str) -> Params:
    name = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    return {"rel_embedding": taker.take(name, (config.relative_attention_num_buckets, heads))}

  embedding = taker.take("shared.weight", (config.vocab_size, d))
  encoder: Params = {"relative_position_bias": position_bias("encoder")}
  for i in range(config.num_encoder_layers):
    block = f"encoder.block.{i}.layer"
    encoder[f"layers_{i}"] = {
        "pre_attention_norm": norm(f"{block}.0.layer_norm.weight"),
        "attention": attention(f"{block}.0.SelfAttention"),
        "pre_mlp_norm": norm(f"{block}.1.layer_norm.weight"),
        "mlp": mlp(f"{block}.1.DenseReluDense"),
    }
  encoder["final_norm"] = norm("encoder.final_layer_norm.weight")

  decoder: Params = {"relative_position_bias": position_bias("decoder")}
  for i in range(config.num_decoder_layers):
    block = f"decoder.block.{i}.layer"
    decoder[f"layers_{i}"] = {
        "pre_self_attention_norm": norm(f"{block}.0.layer_norm.weight"),
        "self_attention": attention(f"{block}.0.SelfAttention"),
        "pre_cross_attention_norm": norm(f"{block}.1.layer_norm.weight"),
        "cross_attention": attention(f"{block}.1.EncDecAttention"),
        "pre_mlp_norm": norm(f"{block}.2.layer_norm.weight"),
        "mlp": mlp(f"{block}.2.DenseReluDense"),
    }
  decoder["final_norm"] = norm("decoder.final_layer_norm.weight")

  if taker.has("lm_head.weight"):
    head = taker.take("lm_head.weight", (config.vocab_size, d))
  elif hf_config.get("tie_word_embeddings", True) is False:
    taker.problems.append(f"missing tensor lm_head.weight: {CONFIG_FILE} says "
                          "tie_word_embeddings=false (a T5Model without LM head?)")
    head = embedding
  else:
    head = embedding
  scale = _head_scale(hf_config, d)
  kernel = _kernel(head, d, config.vocab_size)
  decoder["logits_dense"] = {"kernel": kernel * np.float32(scale) if scale != 1.0 else kernel}

  for name in EMBEDDING_COPIES:
    copy = taker.take_optional(name)
    if copy is not None and not np.array_equal(copy, embedding):
      taker.problems.append(f"{name} differs from shared.weight (T5 ties them)")
  for name in IGNORED_TENSORS:
    taker.take_optional(name)
  taker.raise_problems()
  return {"token_embedder": {"embedding": embedding}, "encoder": encoder, "decoder": decoder}


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(path): tuple(leaf.shape)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def check_params_match_network(params: Params, config: network.NetworkConfig) -> None:
  """Raises ``RuntimeError`` unless ``params`` has exactly the network's names and shapes.

  Compared against the network without time conditioning, the architecture of the checkpoint.
  Runs ``init`` abstractly: no memory or compute.
  """
  plain = dataclasses.replace(config, time_conditioning=False)
  tokens = jnp.ones((1, 1), jnp.int32)
  abstract = jax.eval_shape(
      lambda: encoder_decoder.Transformer(plain).init(jax.random.PRNGKey(0), tokens, tokens))
  expected = _shapes(nn.meta.unbox(abstract["params"]))
  converted = _shapes(params)
  if converted != expected:
    differing = sorted(k for k in expected.keys() | converted.keys()
                       if expected.get(k) != converted.get(k))
    raise RuntimeError(
        "hf_import's parameter tree no longer matches encoder_decoder.Transformer (network.py or "
        "encoder_decoder.py changed?)"
        "; differing entries (name: network, converted): "
        + ", ".join(f"{k}: {expected.get(k)}, {converted.get(k)}" for k in differing[:10]))


def load_hf_params(hf_dir: str, **overrides: Any) -> tuple[network.NetworkConfig, Params]:
  """Reads a local Hugging Face T5 v1.1 / Flan-T5 directory.

  Args:
    hf_dir: directory with ``config.json`` and the weights (see the module docstring).
    **overrides: ``NetworkConfig`` fields to set, e.g. ``dtype="float32"``.

  Returns:
    ``(config, params)``: the network configuration and its ``params`` tree of float32 numpy
    arrays, as ``encoder_decoder.Transformer(config).init(...)["params"]`` unboxed.

  Raises:
    HfImportError: the directory is unreadable, unsupported or inconsistent.
  """
  hf_config = read_hf_config(hf_dir)
  config = network_config_from_hf(hf_config, **overrides)
  params = convert_hf_tensors(read_hf_tensors(hf_dir), hf_config, config, source=hf_dir)
  check_params_match_network(params, config)
  return config, params


def gin_bindings(config: network.NetworkConfig, checkpoint_dir: str) -> str:
  """A gin snippet configuring the network for, and starting training from, a conversion."""
  lines = [
      "# Written by glauber_jax.hf_import: include after gin/models/ul2.gin.",
      "import glauber_jax.network",
      "",
  ]
  lines += [f"network.NetworkConfig.{name} = {getattr(config, name)!r}" for name in GIN_FIELDS]
  lines += ["", f"train.initial_checkpoint = {os.path.abspath(checkpoint_dir)!r}", ""]
  return "\n".join(lines)


def save_params(params: Params, output_dir: str, overwrite: bool = False) -> str:
  """Writes ``{"params": params}`` as an orbax checkpoint at ``output_dir``; returns its path."""
  path = os.path.abspath(output_dir)
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} exists; choose a new output directory or pass --overwrite.")
  ocp.PyTreeCheckpointer().save(path, args=ocp.args.PyTreeSave({"params": params}),
                                force=overwrite)
  return path


def convert(hf_dir: str, output_dir: str, overwrite: bool = False
            ) -> tuple[network.NetworkConfig, str]:
  """Converts ``hf_dir`` to a checkpoint at ``output_dir`` plus ``output_dir/network.gin``.

  Returns the network configuration and the gin snippet's text.
  """
  config, params = load_hf_params(hf_dir)
  path = save_params(params, output_dir, overwrite)
  snippet = gin_bindings(config, path)
  with open(os.path.join(path, GIN_FILE), "w") as f:
    f.write(snippet)
  return config, snippet


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(
      prog="python -m glauber_jax.hf_import",
      description="Convert a local Hugging Face T5 v1.1 / Flan-T5 directory to a glauber_jax "
                  "parameter checkpoint.")
  parser.add_argument("--hf_dir", required=True,
                      help="directory with config.json and model.safetensors/pytorch_model.bin")
  parser.add_argument("--output_dir", required=True,
                      help="where to write the orbax checkpoint (must not exist)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace an existing output_dir")
  args = parser.parse_args(argv)
  try:
    config, snippet = convert(args.hf_dir, args.output_dir, args.overwrite)
  except (HfImportError, FileExistsError) as error:
    raise SystemExit(f"hf_import: {error}") from None
  output = os.path.abspath(args.output_dir)
  print(f"Wrote the parameters of a {config.num_encoder_layers}+{config.num_decoder_layers}-layer "
        f"d_model={config.d_model} T5 to {output}\nand these gin bindings to "
        f"{os.path.join(output, GIN_FILE)}:\n\n{snippet}")


if __name__ == "__main__":
  main(sys.argv[1:])
