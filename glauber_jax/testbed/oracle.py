"""The exact reverse process on enumerable tables (NumPy, float64): what the ``oracle`` and
``perturbed`` rows compute.

A state is a sequence of ``L`` values in ``0..A-1``, a law over states an ``[A ** L]`` table in
``state_index`` order; a site's forward kernel is an ``[A ** (L - 1), A]`` table of
``q(x_k = . | x_{-k})`` indexed by ``context_index``.
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np


def state_index(values: np.ndarray, num_values: int) -> np.ndarray:
  """Index of each row of ``values [n, L]`` (ints in ``0..A-1``) among the ``A ** L`` states,
  first site most significant (row-major order of an ``[A] * L`` array)."""
  values = np.asarray(values, np.int64)
  powers = num_values ** np.arange(values.shape[-1] - 1, -1, -1, dtype=np.int64)
  return values @ powers


def context_index(values: np.ndarray, site: int, num_values: int) -> np.ndarray:
  """Index of ``x_{-site}`` among the ``A ** (L - 1)`` contexts (the other sites in order)."""
  return state_index(np.delete(np.asarray(values), site, axis=-1), num_values)


def all_states(num_values: int, length: int) -> np.ndarray:
  """``[A ** L, L]``: every state in ``state_index`` order."""
  return np.asarray(list(itertools.product(range(num_values), repeat=length)), np.int64).reshape(
      num_values ** length, length)


def oracle_forward_marginals(p_data: np.ndarray, kernels: Sequence[np.ndarray],
                             sites: Sequence[int], num_values: int, length: int) -> np.ndarray:
  """Exact forward marginals ``[T + 1, A ** L]`` of the Glauber chain.

  ``p_data [A ** L]`` is ``p_0``; ``kernels[k] [A ** (L - 1), A]`` is the forward kernel of site
  ``k``, ``q(x_k = . | x_{-k})`` by ``context_index``; step ``t`` redraws site ``sites[t - 1]``:
  ``p_t(y) = sum_a p_{t-1}(y_{-k}, a) q(y_k | y_{-k})``.
  """
  shape = (num_values,) * length
  marginals = [np.asarray(p_data, np.float64)]
  for site in sites:
    p = np.moveaxis(marginals[-1].reshape(shape), site, -1).reshape(-1, num_values)
    p = p.sum(-1, keepdims=True) * kernels[site]
    marginals.append(np.moveaxis(p.reshape(shape), -1, site).reshape(-1))
  return np.stack(marginals)


def oracle_reverse_sample(rng: np.random.Generator, values: np.ndarray, marginals: np.ndarray,
                          sites: Sequence[int], num_values: int) -> tuple[np.ndarray, int]:
  """The exact reverse process from ``values [n, L]`` (a prior's draws, ints ``0..A-1``).

  For ``t = T..1`` redraws site ``k = sites[t - 1]`` from ``p_{t-1}(x_k = . | x_{-k})``, i.e.
  proportional to ``p_{t-1}(x_{-k}, .)`` (``marginals`` from ``oracle_forward_marginals``).
  A context of probability zero under ``p_{t-1}`` (a prior off the chain's support) leaves the
  site as it is; returns the samples and how many such undefined steps there were.
  """
  values = np.array(values, np.int64)
  length = values.shape[1]
  shape = (num_values,) * length
  undefined = 0
  for t in range(len(sites), 0, -1):
    site = int(sites[t - 1])
    table = np.moveaxis(marginals[t - 1].reshape(shape), site, -1).reshape(-1, num_values)
    rows = table[context_index(values, site, num_values)]
    mass = rows.sum(-1)
    defined = mass > 0
    undefined += int(np.sum(~defined))
    cumulative = np.cumsum(rows[defined], -1) / mass[defined, None]
    draws = (rng.random((int(defined.sum()), 1)) < cumulative).argmax(-1)
    values[defined, site] = draws
  return values, undefined


def oracle_reverse_law(start: np.ndarray, marginals: np.ndarray, sites: Sequence[int],
                       num_values: int, length: int) -> np.ndarray:
  """The exact law ``[A ** L]`` of ``oracle_reverse_sample``'s output when its input has law
  ``start``: each step replaces site ``k``'s value by a draw from ``p_{t-1}(x_k | x_{-k})``, and
  a context of probability zero under ``p_{t-1}`` keeps its value."""
  shape = (num_values,) * length
  law = np.asarray(start, np.float64)
  for t in range(len(sites), 0, -1):
    site = int(sites[t - 1])
    table = np.moveaxis(marginals[t - 1].reshape(shape), site, -1).reshape(-1, num_values)
    current = np.moveaxis(law.reshape(shape), site, -1).reshape(-1, num_values)
    mass = table.sum(-1, keepdims=True)
    redrawn = current.sum(-1, keepdims=True) * table / np.where(mass > 0, mass, 1.0)
    law = np.moveaxis(np.where(mass > 0, redrawn, current).reshape(shape), -1, site).reshape(-1)
  return law


def exact_conditional_kernels(p: np.ndarray, num_values: int, length: int) -> list[np.ndarray]:
  """``kernels[k] [A ** (L - 1), A]``: the exact ``p(x_k = . | x_{-k})`` of a table ``p``."""
  shape = (num_values,) * length
  kernels = []
  for site in range(length):
    joint = np.moveaxis(np.asarray(p, np.float64).reshape(shape), site, -1).reshape(
        -1, num_values)
    mass = joint.sum(-1, keepdims=True)
    kernels.append(np.where(mass > 0, joint / np.where(mass > 0, mass, 1.0), 1.0 / num_values))
  return kernels


def total_variation(values: np.ndarray, p: np.ndarray, num_values: int) -> float:
  """TV between the empirical law of ``values [n, L]`` and ``p [A ** L]``."""
  counts = np.bincount(state_index(values, num_values), minlength=p.size)
  return float(0.5 * np.abs(counts / len(values) - p).sum())
