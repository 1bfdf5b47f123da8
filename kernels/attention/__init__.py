"""Attention entry points with an `impl` switch; every implementation matches `reference`.

Implementations: `xla` (the plain-jnp reference). Further backends register in `_IMPLS`.
"""

from __future__ import annotations

from kernels.attention import reference

Rope = reference.Rope

_IMPLS = {
  "xla": (reference.attention, reference.hybrid_attention),
}
IMPLS = tuple(_IMPLS)


def _lookup(impl: str):
  try:
    return _IMPLS[impl]
  except KeyError:
    raise ValueError(f"unknown attention impl {impl!r}; choose one of {IMPLS}") from None


def attention(q, k, v, *, q_rope=None, k_rope=None, impl: str = "xla"):
  """Multi-head attention (B L N K) with optional rotate-half RoPE tables on q and k."""
  return _lookup(impl)[0](q, k, v, q_rope=q_rope, k_rope=k_rope)


def hybrid_attention(q, k, v, k_ref, v_ref, *, q_rope, k_rope, q_ref_rope, k_ref_rope, impl="xla"):
  """Self-attention plus reference attention (separate softmaxes), summed before projection."""
  return _lookup(impl)[1](
    q, k, v, k_ref, v_ref, q_rope=q_rope, k_rope=k_rope, q_ref_rope=q_ref_rope, k_ref_rope=k_ref_rope
  )
