"""Cross-lowering of every GPU/TPU attention kernel on the CPU, forward and backward.

`jax.jit(f).trace(...).lower(lowering_platforms=(platform,))` runs the Pallas -> Triton,
Pallas -> Mosaic GPU and Pallas -> Mosaic TPU lowerings (and the cuDNN custom-call lowering)
on a CPU-only jaxlib at the full model shapes, from ShapeDtypeStructs (nothing is allocated).
It catches unsupported primitives, dtype and block-shape errors; it does not run ptxas, the
Triton compiler or the Mosaic TPU compiler, so shared-memory/VMEM overflow and numerics still
need hardware (benchmarks/attention_benchmark.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from kernels.attention import compat, cudnn, pallas_gpu, pallas_mosaic, pallas_tpu

# (B, L, S, N): 1.3B at 480p and 14B at 720p, reference tokens S; head dim 128.
SHAPES = {"1.3b": (1, 32760, 1560, 12), "14b": (1, 75600, 3600, 40)}
KD = 128


def _sd(*shape, dtype=jnp.bfloat16):
  return jax.ShapeDtypeStruct(shape, dtype)


def _args(shape, dtype):
  b, lq, lk, n = shape
  tab = lambda n_: (_sd(n_, KD // 2, dtype=jnp.float32),) * 2
  arrays = (_sd(b, lq, n, KD, dtype=dtype),) * 3 + (_sd(b, lk, n, KD, dtype=dtype),) * 2
  return arrays + (tab(lq), tab(lq), tab(lq), tab(lk))


def _hybrid(mod, **kw):
  def fwd(q, k, v, kr, vr, qt, kt, qrt, krt):
    return mod.hybrid_attention(
      q, k, v, kr, vr, q_rope=qt, k_rope=kt, q_ref_rope=qrt, k_ref_rope=krt, **kw
    )

  def bwd(*a):
    out, vjp = jax.vjp(lambda *x: fwd(*x, *a[5:]), *a[:5])
    return vjp(out)

  return fwd, bwd


def _lower(fn, args, platform):
  text = compat.lower(fn, args, platform).as_text()
  assert text  # lowering produced a module


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", (jnp.bfloat16, jnp.float32), ids=lambda d: d.__name__)
def test_pallas_gpu_lowers_for_cuda(shape, dtype):
  fwd, bwd = _hybrid(pallas_gpu, cfg=pallas_gpu.config(interpret=False))
  args = _args(SHAPES[shape], dtype)
  _lower(fwd, args, "cuda")
  _lower(bwd, args, "cuda")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", (jnp.bfloat16, jnp.float16), ids=lambda d: d.__name__)
def test_pallas_mosaic_lowers_for_cuda(shape, dtype):
  """Mosaic GPU forward (TMA + wgmma, SMEM budget checked by the lowering) and the Triton
  backward it reuses."""
  fwd, bwd = _hybrid(pallas_mosaic, cfg=pallas_mosaic.config(interpret=False))
  args = _args(SHAPES[shape], dtype)
  _lower(fwd, args, "cuda")
  _lower(bwd, args, "cuda")


def test_pallas_mosaic_refuses_float32_and_cpu():
  q = jnp.zeros((1, 8, 1, 128), jnp.float32)
  with pytest.raises(ValueError, match="bfloat16 or float16"):
    pallas_mosaic.attention(q, q, q, cfg=pallas_mosaic.config(interpret=False))
  q = q.astype(jnp.bfloat16)
  if jax.default_backend() == "cpu":
    with pytest.raises(ValueError, match="Hopper"):
      pallas_mosaic.attention(q, q, q)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", (jnp.bfloat16, jnp.float32), ids=lambda d: d.__name__)
def test_pallas_tpu_lowers_for_tpu(shape, dtype):
  fwd, bwd = _hybrid(pallas_tpu, cfg=pallas_tpu.config(interpret=False))
  args = _args(SHAPES[shape], dtype)
  _lower(fwd, args, "tpu")
  _lower(bwd, args, "tpu")


def test_cudnn_lowers_for_cuda(monkeypatch):
  """cuDNN asks the local GPU for its cuDNN version and compute capability while tracing; pretend
  to be an H100 with cuDNN 9.10 (private jax hooks) so that its lowering can be checked here."""
  from jax._src.cudnn import fused_attention_stablehlo as fa

  monkeypatch.setattr(fa, "check_cudnn_version", lambda: 91000)
  monkeypatch.setattr(fa, "check_compute_capability", lambda capability: True)
  monkeypatch.setattr(fa, "is_cuda_compute_capability_equal", lambda capability: False)
  fwd, bwd = _hybrid(cudnn)
  args = _args(SHAPES["1.3b"], jnp.bfloat16)
  _lower(fwd, args, "cuda")
  _lower(bwd, args, "cuda")
