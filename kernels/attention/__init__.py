"""Attention entry points with an `impl` switch; every implementation matches `reference`.

Implementations (`_IMPLS`):
- `reference`: the plain-jnp oracle (`reference.py`), materialises (L, S) logits; tests only.
- `xla`: the oracle's semantics chunked over keys with an online softmax (`xla_chunked.py`);
  memory linear in sequence length; the default, runs everywhere.
- `cudnn`: RoPE in XLA, then `jax.nn.dot_product_attention(implementation="cudnn")` (`cudnn.py`).
- `pallas_gpu`: Pallas, Triton lowering, fused RoPE (`pallas_gpu.py`); interpret mode on CPU.
- `pallas_mosaic`: Pallas Mosaic GPU forward for Hopper (TMA + wgmma, FA3 style, Q-RoPE fused,
  K rotated in XLA) with the `pallas_gpu` backward (`pallas_mosaic.py`); GPU only.
- `pallas_tpu`: Pallas Mosaic TPU, fused RoPE with lane rolls (`pallas_tpu.py`).

All take un-rotated q, k (B, L, N, K; rotate-half channel order) and (cos, sin) tables of shape (L,
K/2); the fused kernels rotate inside. `hybrid_attention` is the fused two-branch (self + reference)
form of official main block with hybrid reference attention: one pass per query tile, separate
softmax normalisers, summed outputs. Backends that take a kernel config accept `cfg=` through their
own modules. Context-parallel wrappers are in `context_parallel.py`.
"""

from __future__ import annotations

from kernels.attention import (
  cudnn,
  pallas_gpu,
  pallas_mosaic,
  pallas_tpu,
  reference,
  xla_chunked,
)

Rope = reference.Rope

_IMPLS = {
  "xla": (xla_chunked.attention, xla_chunked.hybrid_attention),
  "reference": (reference.attention, reference.hybrid_attention),
  "cudnn": (cudnn.attention, cudnn.hybrid_attention),
  "pallas_gpu": (pallas_gpu.attention, pallas_gpu.hybrid_attention),
  "pallas_mosaic": (pallas_mosaic.attention, pallas_mosaic.hybrid_attention),
  "pallas_tpu": (pallas_tpu.attention, pallas_tpu.hybrid_attention),
}
IMPLS = tuple(_IMPLS)


def register(name: str, attention_fn, hybrid_fn) -> None:
  """Adds an implementation (e.g. a context-parallel wrapper of another one) under `name`.

  Both callables take the signatures of `attention` / `hybrid_attention` below without `impl`.
  Registering the same name again with other functions is an error (idempotent otherwise).
  """
  entry = _IMPLS.get(name)
  if entry is not None and entry != (attention_fn, hybrid_fn):
    raise ValueError(f"attention impl {name!r} is already registered")
  _IMPLS[name] = (attention_fn, hybrid_fn)


def registered() -> tuple[str, ...]:
  """Every implementation name usable as `impl` (the built-in `IMPLS` plus registered ones)."""
  return tuple(_IMPLS)


def _lookup(impl: str):
  try:
    return _IMPLS[impl]
  except KeyError:
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {registered()}") from None


def attention(q, k, v, *, q_rope=None, k_rope=None, impl: str = "xla"):
  """Multi-head attention (B L N K) with optional rotate-half RoPE tables on q and k."""
  return _lookup(impl)[0](q, k, v, q_rope=q_rope, k_rope=k_rope)


def hybrid_attention(q, k, v, k_ref, v_ref, *, q_rope, k_rope, q_ref_rope, k_ref_rope, impl="xla"):
  """Self-attention plus reference attention (separate softmaxes), summed before projection."""
  return _lookup(impl)[1](
    q,
    k,
    v,
    k_ref,
    v_ref,
    q_rope=q_rope,
    k_rope=k_rope,
    q_ref_rope=q_ref_rope,
    k_ref_rope=k_ref_rope,
  )
