"""Gin flags and the errors a user sees for bad configurations."""

import os

import gin
import pytest

from glauber_jax import gin_utils
import glauber_jax.train  # noqa: F401  Registers the configurables the gin files name.


@pytest.fixture(autouse=True)
def _clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def test_split_gin_args():
  files, bindings, rest = gin_utils.split_gin_args([
      "--gin_file=a.gin", "--gin_file", "b.gin", "--gin.TRAIN_STEPS=10",
      "--gin.train.log_every=5", "--gin_bindings=MODEL_DIR='/x'", "--multihost"])
  assert files == ["a.gin", "b.gin"]
  assert bindings == ["TRAIN_STEPS=10", "train.log_every=5", "MODEL_DIR='/x'"]
  assert rest == ["--multihost"]
  with pytest.raises(gin_utils.GinConfigError, match="expected --gin.NAME=VALUE"):
    gin_utils.split_gin_args(["--gin.TRAIN_STEPS"])


def test_size_file_parses_and_sets_macros():
  gin_utils.parse_gin(["gin/ul2_tiny.gin"], ["TRAIN_STEPS=7"])
  assert gin.query_parameter("%TRAIN_STEPS") == 7
  assert gin_utils.missing_required_macros() == []


def test_includes_resolve_beside_directories_named_like_them(tmp_path, monkeypatch):
  """``runs/`` (model directories) and ``models/`` in the working directory, which is on
  ``sys.path`` under ``python -m``, must not break ``include 'runs/pretrain.gin'``."""
  for name in ("runs", "models"):
    (tmp_path / name).mkdir()
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  gin_utils.parse_gin([os.path.join(gin_utils.GIN_DIR, "ul2_tiny.gin")], ["TRAIN_STEPS=7"])
  assert gin.query_parameter("%TRAIN_STEPS") == 7


def test_unknown_binding_names_the_typo_and_suggests():
  with pytest.raises(gin_utils.GinConfigError) as error:
    gin_utils.parse_gin(["gin/ul2_tiny.gin"], ["train.log_evry=5"])
  message = str(error.value)
  assert "--gin.train.log_evry=5" in message
  assert "train.log_every" in message  # the suggestion


def test_unknown_configurable_in_binding():
  with pytest.raises(gin_utils.GinConfigError, match="NetworkConfg"):
    gin_utils.parse_gin(["gin/ul2_tiny.gin"], ["NetworkConfg.d_model=3"])


def test_missing_gin_file():
  with pytest.raises(gin_utils.GinConfigError, match="not found"):
    gin_utils.parse_gin(["gin/does_not_exist.gin"], [])


def test_required_macros_are_reported(tmp_path):
  config = tmp_path / "partial.gin"
  config.write_text("include 'runs/pretrain.gin'\ninclude 'models/ul2.gin'\n"
                    "TRAIN_STEPS = 3\nBATCH_SIZE = 2\n")
  with pytest.raises(gin_utils.GinConfigError) as error:
    gin_utils.parse_gin([str(config)], [])
  assert "unset: MODEL_DIR, MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS" in str(error.value)
  assert "--gin.MODEL_DIR=..." in str(error.value)
