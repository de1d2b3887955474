"""Shared pytest set-up: a private data cache per test session (tokenizers, chunk files)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True, scope="session")
def private_data_cache(tmp_path_factory: pytest.TempPathFactory) -> str:
  """Points ``$GLAUBER_JAX_CACHE`` at a fresh directory, so tests never read a user's cache."""
  path = str(tmp_path_factory.mktemp("glauber_jax_cache"))
  previous = os.environ.get("GLAUBER_JAX_CACHE")
  os.environ["GLAUBER_JAX_CACHE"] = path
  yield path
  if previous is None:
    os.environ.pop("GLAUBER_JAX_CACHE")
  else:
    os.environ["GLAUBER_JAX_CACHE"] = previous


def pytest_configure(config: pytest.Config) -> None:
  """Lists the slowest tests at the end of every run (the suite's time budget: README), unless
  the command line sets ``--durations`` itself."""
  if config.option.durations is None:
    config.option.durations = 15
