"""Run paths: local ones made absolute, URIs (gs://) left as they are, writes that append."""

from __future__ import annotations

import os
import pathlib

import pytest

from glauber_jax import checkpoints, paths


def test_local_paths_become_absolute_and_uris_stay(tmp_path: pathlib.Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
  monkeypatch.chdir(tmp_path)
  assert str(paths.resolve("runs/a")) == os.path.join(str(tmp_path), "runs", "a")
  assert str(paths.resolve("gs://bucket/runs/a")) == "gs://bucket/runs/a"
  assert str(paths.resolve("gs://bucket/runs/a") / "checkpoints") == \
      "gs://bucket/runs/a/checkpoints"
  assert paths.is_uri("s3://b/x") and not paths.is_uri("/data/x")


def test_write_text_creates_directories_and_appends(tmp_path: pathlib.Path) -> None:
  target = paths.write_text(tmp_path / "a" / "b.jsonl", "1\n")
  paths.write_text(target, "2\n", append=True)
  assert (tmp_path / "a" / "b.jsonl").read_text() == "1\n2\n"
  paths.write_text(target, "3\n")
  assert (tmp_path / "a" / "b.jsonl").read_text() == "3\n"


def test_checkpointer_and_loader_take_relative_local_paths(tmp_path: pathlib.Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
  monkeypatch.chdir(tmp_path)
  checkpointer = checkpoints.Checkpointer("run")
  assert str(checkpointer.directory) == os.path.join(str(tmp_path), "run", "checkpoints")
  checkpointer.close()
  with pytest.raises(checkpoints.CheckpointError, match="does not exist"):
    checkpoints.load_params("absent", {})
