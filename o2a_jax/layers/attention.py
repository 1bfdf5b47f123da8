"""Self-attention with 3-D RoPE and hybrid reference fusion (HRFA), and text cross-attention.

Dims: B batch, L video tokens, S context tokens (text or reference), D width, N heads, K head dim.

HRFA (official main block with hybrid reference attention): the reference branch reuses the
normalised self-attention query, projects the reference features with its own key/value maps
(`add_k_proj`, `add_v_proj`, key RMSNorm `norm_added_k`), attends with frame-index-0 RoPE on both
sides and a separate softmax, and its output is summed with the self-attention output before the
shared `to_out` projection.
"""

from __future__ import annotations

import jax
from flax import nnx

import kernels
from o2a_jax import sharding
from o2a_jax.dims import dims
from o2a_jax.layers.linear import dense
from o2a_jax.layers.norms import RMSNorm

Rope = tuple[jax.Array, jax.Array]


class Attention(nnx.Module):
  """q/k/v/out projections with RMSNorm across heads on q and k (Wan `rms_norm_across_heads`)."""

  def __init__(
    self,
    dim: int,
    num_heads: int,
    *,
    with_ref: bool,
    eps: float,
    dtype,
    param_dtype,
    attn_impl: str,
    rngs: nnx.Rngs,
  ):
    if dim % num_heads:
      raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
    self.num_heads, self.attn_impl, self.with_ref = num_heads, attn_impl, with_ref
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.to_q = dense(dim, dim, ("embed", "heads"), **kw)
    self.to_k = dense(dim, dim, ("embed", "heads"), **kw)
    self.to_v = dense(dim, dim, ("embed", "heads"), **kw)
    self.to_out = dense(dim, dim, ("heads", "embed"), **kw)
    self.norm_q = RMSNorm(dim, eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm_k = RMSNorm(dim, eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    if with_ref:
      self.add_k_proj = dense(dim, dim, ("embed", "heads"), **kw)
      self.add_v_proj = dense(dim, dim, ("embed", "heads"), **kw)
      self.norm_added_k = RMSNorm(dim, eps=eps, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def _heads(self, x: jax.Array) -> jax.Array:
    x = x.reshape(*x.shape[:-1], self.num_heads, -1)  # B L N K
    return sharding.constrain(x, ("act_batch", "act_tokens", "act_heads", None))

  @dims(x="B L D", context="B S D", ref="B _ D", returns="B L D")
  def __call__(
    self,
    x: jax.Array,
    context: jax.Array | None = None,
    *,
    rope: Rope | None = None,
    ref: jax.Array | None = None,
    q_ref_rope: Rope | None = None,
    k_ref_rope: Rope | None = None,
  ) -> jax.Array:
    """x (B, L, D) -> (B, L, D).

    Args:
      context: keys/values source for cross-attention (B, S, D); None for self-attention.
      rope: (cos, sin) (L, K/2) for q and k of the self-attention; None for no rotation.
      ref: reference features (B, S, D) for the HRFA branch (blocks built `with_ref`).
      q_ref_rope, k_ref_rope: frame-index-0 tables of the queries and of the reference keys.
    """
    kv = x if context is None else context
    q = self._heads(self.norm_q(self.to_q(x)))
    k = self._heads(self.norm_k(self.to_k(kv)))
    v = self._heads(self.to_v(kv))
    if ref is None:
      o = kernels.attention(q, k, v, q_rope=rope, k_rope=rope, impl=self.attn_impl)
    else:
      if not self.with_ref:
        raise ValueError("reference features given to an attention built without HRFA")
      k_ref = self._heads(self.norm_added_k(self.add_k_proj(ref)))
      v_ref = self._heads(self.add_v_proj(ref))
      o = kernels.hybrid_attention(
        q,
        k,
        v,
        k_ref,
        v_ref,
        q_rope=rope,
        k_rope=rope,
        q_ref_rope=q_ref_rope,
        k_ref_rope=k_ref_rope,
        impl=self.attn_impl,
      )
    return self.to_out(o.reshape(*o.shape[:-2], -1))
