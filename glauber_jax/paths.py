"""Run directories that may be local or remote (``gs://`` on Cloud TPU pods, ``s3://``).

Everything a run writes (checkpoints, ``config.gin``, TensorBoard events, JSONL results) goes
through ``etils.epath``, which orbax uses too: local paths are made absolute, and URIs are kept
as they are and handled by epath's backends (``tf.io.gfile`` when TensorFlow is installed, else
``fsspec``, e.g. ``pip install gcsfs``).
"""

from __future__ import annotations

import os

from etils import epath


def is_uri(path: str) -> bool:
  """Whether ``path`` names remote storage (``scheme://...``)."""
  return "://" in path


def resolve(path: str | os.PathLike[str]) -> epath.Path:
  """``path`` as an ``epath.Path``: absolute when local, unchanged when a URI."""
  text = os.fspath(path)
  return epath.Path(text if is_uri(text) else os.path.abspath(text))


def write_text(path: str | os.PathLike[str], text: str, append: bool = False) -> epath.Path:
  """Writes (or appends) ``text`` to ``path``, creating its directory; returns the path."""
  target = resolve(path)
  target.parent.mkdir(parents=True, exist_ok=True)
  with target.open("a" if append else "w") as f:
    f.write(text)
  return target
