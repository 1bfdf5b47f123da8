"""Every attention implementation against the plain-jnp oracle: outputs and gradients.

Pallas kernels run in interpret mode on the CPU with small blocks, at lengths that are not
multiples of the blocks (padding + key masking), several heads, batch 2. Tolerances are the
issue's relative errors ||a-b||/||b||: 1e-5 in float32, 1e-2 in bfloat16.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import kernels as attn
from kernels.attention import pallas_gpu, pallas_tpu, reference, xla_chunked
from kernels.attention.compat import pltpu

TOL = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2}
B, L, S, N = 2, 72, 41, 2


def _rel(a, b):
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _table(key, length, half, frame0=False):
  ang = jax.random.uniform(key, (length, half), minval=0.0, maxval=6.0)
  if frame0:  # the reference branch: temporal part at frame 0 (cos 1, sin 0)
    ang = ang.at[:, : half // 3].set(0.0)
  return jnp.cos(ang), jnp.sin(ang)


def _inputs(kd=128, lq=L, lk=S, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 10)
  x = lambda i, n: jax.random.normal(ks[i], (B, n, N, kd), jnp.float32)
  arrays = dict(q=x(0, lq), k=x(1, lq), v=x(2, lq), k_ref=x(3, lk), v_ref=x(4, lk), g=x(5, lq))
  h = kd // 2
  tables = dict(
    q_rope=_table(ks[6], lq, h),
    k_rope=_table(ks[7], lq, h),
    q_ref_rope=_table(ks[6], lq, h, frame0=True),
    k_ref_rope=_table(ks[8], lk, h, frame0=True),
  )
  return arrays, tables


def _fns(mod, cfg, mode, tables):
  """(oracle, candidate) closures over the differentiable arguments for one mode."""
  t = tables
  if mode == "self":
    kw = dict(q_rope=t["q_rope"], k_rope=t["k_rope"])
    return (
      lambda q, k, v: reference.attention(q, k, v, **kw),
      lambda q, k, v: mod.attention(q, k, v, **kw, cfg=cfg),
    )
  if mode == "reference":
    kw = dict(q_rope=t["q_ref_rope"], k_rope=t["k_ref_rope"])
    return (
      lambda q, k, v: reference.attention(q, k, v, **kw),
      lambda q, k, v: mod.attention(q, k, v, **kw, cfg=cfg),
    )
  return (
    lambda *a: reference.hybrid_attention(*a, **t),
    lambda *a: mod.hybrid_attention(*a, **t, cfg=cfg),
  )


def _args(arrays, mode, dtype):
  names = {"self": "q k v", "reference": "q k_ref v_ref", "hybrid": "q k v k_ref v_ref"}[mode]
  return [arrays[n].astype(dtype) for n in names.split()]


def check_against_oracle(mod, cfg, mode, dtype, kd=128, lq=L, lk=S):
  arrays, tables = _inputs(kd, lq, lk)
  args = _args(arrays, mode, dtype)
  oracle, candidate = _fns(mod, cfg, mode, tables)
  g = arrays["g"].astype(dtype)
  want, want_vjp = jax.vjp(oracle, *args)
  got, got_vjp = jax.vjp(jax.jit(candidate), *args)
  assert got.shape == want.shape and got.dtype == want.dtype
  errors = [_rel(got, want)] + [_rel(a, b) for a, b in zip(got_vjp(g), want_vjp(g))]
  assert max(errors) < TOL[dtype], f"{mode} {dtype.__name__}: rel errors (out, grads) {errors}"
  return errors


MODES = ("self", "reference", "hybrid")
DTYPES = (jnp.float32, jnp.bfloat16)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_xla_chunked(mode, dtype):
  check_against_oracle(xla_chunked, xla_chunked.config(chunk=16), mode, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_pallas_gpu_interpret(mode, dtype):
  cfg = pallas_gpu.config(16, 32, 32, 16, interpret=True)
  check_against_oracle(pallas_gpu, cfg, mode, dtype)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_pallas_tpu_interpret(mode, dtype):
  cfg = pallas_tpu.config(16, 32, 32, 16, interpret=True)
  check_against_oracle(pallas_tpu, cfg, mode, dtype)


@pytest.mark.slow
def test_pallas_tpu_tpu_interpreter():
  """The TPU interpreter (simulated VMEM, DMAs, grid order) rather than the HLO interpreter:
  checks the clamped key-block index maps and the scratch carried across the reduction axis."""
  cfg = dataclasses.replace(pallas_tpu.config(16, 32, 32, 16), interpret=pltpu.InterpretParams())
  check_against_oracle(pallas_tpu, cfg, "hybrid", jnp.float32, lq=40, lk=20)


def test_pallas_tpu_head_dim_64_short_keys():
  cfg = pallas_tpu.config(16, 16, 16, 16, interpret=True)
  check_against_oracle(pallas_tpu, cfg, "hybrid", jnp.float32, kd=64, lq=33, lk=5)


def test_pallas_gpu_head_dim_64_short_keys():
  cfg = pallas_gpu.config(16, 16, 16, 16, interpret=True)
  check_against_oracle(pallas_gpu, cfg, "hybrid", jnp.float32, kd=64, lq=33, lk=5)


@pytest.mark.parametrize("impl", ["xla", "pallas_gpu", "pallas_tpu"])
def test_public_api_default_config(impl):
  """The dispatch table with each implementation's default blocks (one partial block here)."""
  arrays, t = _inputs(lq=40, lk=9)
  a = arrays
  want = reference.hybrid_attention(a["q"], a["k"], a["v"], a["k_ref"], a["v_ref"], **t)
  got = attn.hybrid_attention(a["q"], a["k"], a["v"], a["k_ref"], a["v_ref"], **t, impl=impl)
  assert _rel(got, want) < 1e-5
  want = reference.attention(a["q"], a["k"], a["v"])
  assert _rel(attn.attention(a["q"], a["k"], a["v"], impl=impl), want) < 1e-5


def test_unknown_impl_and_bad_tables():
  arrays, t = _inputs(lq=8, lk=8)
  q = arrays["q"]
  with pytest.raises(ValueError, match="unknown attention impl"):
    attn.attention(q, q, q, impl="nope")
  with pytest.raises(ValueError, match="q_rope tables"):
    bad = (t["q_rope"][0][:3], t["q_rope"][1][:3])
    attn.attention(q, q, q, q_rope=bad, k_rope=t["k_rope"], impl="pallas_gpu")


def test_cudnn_refuses_float32():
  arrays, _ = _inputs(lq=8, lk=8)
  q = arrays["q"]
  with pytest.raises(ValueError, match="bfloat16 or float16"):
    attn.attention(q, q, q, impl="cudnn")


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["pallas_gpu", "pallas_mosaic", "cudnn", "xla"])
@pytest.mark.parametrize("mode", MODES)
def test_gpu_compiled_bfloat16(impl, mode):
  """On a GPU: the compiled kernels (no interpret) at a few thousand tokens, bfloat16."""
  from kernels.attention import cudnn, pallas_mosaic

  mod = {"pallas_gpu": pallas_gpu, "pallas_mosaic": pallas_mosaic, "cudnn": cudnn}.get(impl)
  cfg = {"pallas_gpu": pallas_gpu.config(interpret=False)}.get(impl)
  if impl == "pallas_mosaic":
    cfg = pallas_mosaic.config(interpret=False)
  if impl == "xla":
    mod, cfg = xla_chunked, xla_chunked.config()
  if impl == "cudnn":  # cudnn takes no cfg
    arrays, t = _inputs(lq=2000, lk=390)
    args = _args(arrays, mode, jnp.bfloat16)
    oracle, _ = _fns(xla_chunked, None, mode, t)
    cand = {
      "self": lambda q, k, v: cudnn.attention(q, k, v, q_rope=t["q_rope"], k_rope=t["k_rope"]),
      "reference": lambda q, k, v: cudnn.attention(
        q, k, v, q_rope=t["q_ref_rope"], k_rope=t["k_ref_rope"]
      ),
      "hybrid": lambda *a: cudnn.hybrid_attention(*a, **t),
    }[mode]
    assert _rel(jax.jit(cand)(*args), oracle(*args)) < 1e-2
    return
  check_against_oracle(mod, cfg, mode, jnp.bfloat16, lq=2000, lk=390)
