"""The one place where jax 0.10.x (CPU CI, Python 3.11) and 0.11.x (GPU, Python 3.12) differ.

Every Pallas import and every API whose spelling moved between the two versions goes through
here, so that a version bump touches this file only.

- Triton: `CompilerParams` lives in `jax.experimental.pallas.triton` on both versions (the
  backend is deprecated in 0.11 but still ships); `pl.dot` moved there in 0.10.2, so kernels use
  `lax.dot_general` instead, which every backend lowers.
- Mosaic TPU: `pltpu.CompilerParams` (was `TPUCompilerParams` before 0.7) and `pltpu.roll`.
- Mosaic GPU: `plgpu.kernel` with `out_shape` (0.10) or `out_type` (0.11).
- `jax.shard_map` is top level on both; `check_vma=False` because a `pallas_call` output carries
  no varying-manual-axes type.
"""

from __future__ import annotations

import inspect
import warnings

import jax
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

with warnings.catch_warnings():
  # 0.11 warns that the Triton backend is deprecated; the kernel is still its portable path.
  warnings.simplefilter("ignore", DeprecationWarning)
  from jax.experimental.pallas import triton as pltriton

JAX_VERSION = tuple(int(p) for p in jax.__version__.split(".")[:3] if p.isdigit())

__all__ = [
  "JAX_VERSION",
  "dot",
  "lower",
  "mosaic_gpu",
  "pl",
  "pltpu",
  "shard_map",
  "tpu_compiler_params",
  "triton_compiler_params",
]

_NT = (((1,), (1,)), ((), ()))  # a @ b.T
_TN = (((0,), (0,)), ((), ()))  # a.T @ b
_NN = (((1,), (0,)), ((), ()))  # a @ b


def dot(a: jax.Array, b: jax.Array, *, ta: bool = False, tb: bool = False) -> jax.Array:
  """2-D matmul with optional transposes and float32 accumulation, lowered by every backend.

  float32 operands use HIGHEST precision so that GPUs do not silently drop to TF32 (the oracle
  parity tolerance is 1e-5); bf16 operands take the native MMA path.
  """
  if ta and tb:
    raise ValueError("dot: transposing both operands is not needed by any kernel")
  dims = _TN if ta else _NT if tb else _NN
  precision = lax.Precision.HIGHEST if a.dtype == jax.numpy.float32 else None
  return lax.dot_general(a, b, dims, preferred_element_type=jax.numpy.float32, precision=precision)


def triton_compiler_params(num_warps: int, num_stages: int):
  """Selects the Triton lowering of `pallas_call` (Mosaic GPU is the default since 0.9)."""
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def tpu_compiler_params(dimension_semantics: tuple[str, ...]):
  return pltpu.CompilerParams(dimension_semantics=dimension_semantics)


def shard_map(f, *, mesh, in_specs, out_specs):
  return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)


def lower(fn, args, platform: str):
  """Lowers `fn(*args)` for `platform` ('cuda', 'tpu') on any host; args may be abstract."""
  return jax.jit(fn).trace(*args).lower(lowering_platforms=(platform,))


def mosaic_gpu():
  """The Mosaic GPU Pallas module (imported lazily: it pulls in the Mosaic GPU dialects)."""
  from jax.experimental.pallas import mosaic_gpu as plgpu

  return plgpu


def mgpu_kernel(body, *, out_shape, **kwargs):
  """`plgpu.kernel`, whose output argument was renamed `out_shape` -> `out_type` in 0.10/0.11."""
  plgpu = mosaic_gpu()
  params = inspect.signature(plgpu.kernel).parameters
  key = "out_type" if "out_type" in params else "out_shape"
  return plgpu.kernel(body, **{key: out_shape}, **kwargs)
