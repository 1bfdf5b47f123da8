"""Context-parallel attention on the simulated 8-device CPU mesh equals the single-device oracle.

Mesh (data, fsdp, context, tensor) = (1, 2, 2, 2) from `o2a_jax.sharding.make_mesh`: batch over
fsdp, tokens over context, heads over tensor; outputs and gradients are compared.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kernels.attention import context_parallel as cp
from kernels.attention import reference
from o2a_jax import sharding

B, L, S, N, KD = 2, 24, 8, 4, 64


def _rel(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _inputs():
  ks = jax.random.split(jax.random.PRNGKey(1), 9)
  x = lambda i, n: jax.random.normal(ks[i], (B, n, N, KD), jnp.float32)
  tab = lambda i, n: (jnp.cos(t := jax.random.uniform(ks[i], (n, KD // 2)) * 6), jnp.sin(t))
  arrays = (x(0, L), x(1, L), x(2, L), x(3, S), x(4, S))
  tables = dict(q_rope=tab(5, L), k_rope=tab(6, L), q_ref_rope=tab(7, L), k_ref_rope=tab(8, S))
  return arrays, tables, x(0, L) * 0.5 + 1.0


@pytest.fixture(scope="module")
def mesh():
  return sharding.make_mesh((1, 2, 2, 2))


def _compare(fn, oracle, arrays, g):
  want, want_vjp = jax.vjp(oracle, *arrays)
  got, got_vjp = jax.vjp(jax.jit(fn), *arrays)
  errors = [_rel(got, want)] + [_rel(a, b) for a, b in zip(got_vjp(g), want_vjp(g))]
  assert max(errors) < 1e-5, errors


@pytest.mark.parametrize("strategy", cp.STRATEGIES)
def test_hybrid_xla(mesh, strategy):
  arrays, t, g = _inputs()
  fn = lambda *a: cp.hybrid_attention(*a, **t, impl="xla", strategy=strategy, mesh=mesh)
  _compare(fn, lambda *a: reference.hybrid_attention(*a, **t), arrays, g)


@pytest.mark.parametrize("strategy", cp.STRATEGIES)
def test_self_attention_pallas_gpu(mesh, strategy):
  arrays, t, g = _inputs()
  kw = dict(q_rope=t["q_rope"], k_rope=t["k_rope"])
  fn = lambda *a: cp.attention(*a, **kw, impl="pallas_gpu", strategy=strategy, mesh=mesh)
  _compare(fn, lambda *a: reference.attention(*a, **kw), arrays[:3], g)


def test_hybrid_pallas_gpu_ulysses_fused(mesh):
  arrays, t, g = _inputs()
  fn = lambda *a: cp.hybrid_attention(*a, **t, impl="pallas_gpu", strategy="ulysses", mesh=mesh)
  _compare(fn, lambda *a: reference.hybrid_attention(*a, **t), arrays, g)


def test_bad_layouts_are_refused(mesh):
  arrays, t, _ = _inputs()
  q = arrays[0]
  with pytest.raises(ValueError, match="strategy"):
    cp.attention(q, q, q, strategy="ring", mesh=mesh)
  q3 = jnp.zeros((B, L, 2, KD))  # 2 heads / tensor 2 = 1 head per shard, not divisible by 2
  with pytest.raises(ValueError, match="ulysses needs"):
    cp.attention(q3, q3, q3, mesh=mesh)
