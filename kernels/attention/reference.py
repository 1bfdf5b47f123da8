"""Plain-jnp attention with rotate-half RoPE: the oracle every backend is tested against.

Dims: B batch, L query tokens, S key tokens, N heads, K head dim.

Layout: q and k channels of every head are stored in rotate-half order, `[re_0..re_{K/2-1} |
im_0..im_{K/2-1}]`, so that the rotation by the complex factor `cos + i sin` of pair j reads
`(re_j, im_j) -> (re_j cos - im_j sin, re_j sin + im_j cos)`. The checkpoint converter permutes
Wan's interleaved pairs into this order once; dot products are unchanged by the permutation.

A rope table is a pair `(cos, sin)`, each (L, K/2) float32. The hybrid reference branch is the
same computation with tables whose temporal part is frame index 0 (cos 1, sin 0).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.attention import common

Rope = tuple[jax.Array, jax.Array]


def apply_rope(x: jax.Array, rope: Rope | None) -> jax.Array:
  """Rotates x (B, L, N, K) by the (L, K/2) tables; float32 math, result in x.dtype."""
  if rope is None:
    return x
  cos, sin = rope
  half = x.shape[-1] // 2
  if cos.shape != (x.shape[1], half) or sin.shape != cos.shape:
    raise ValueError(f"rope tables {cos.shape}/{sin.shape} do not fit x {x.shape}: need (L, K/2)")
  return common.rotate(x, cos, sin)


def _softmax_attention(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
  """softmax(q k^T / sqrt(K)) v with float32 logits and softmax; B L N K -> B L N K."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("BLNK,BSNK->BNLS", q, k, preferred_element_type=jnp.float32) * scale
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  return jnp.einsum("BNLS,BSNK->BLNK", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)


def attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  q_rope: Rope | None = None,
  k_rope: Rope | None = None,
) -> jax.Array:
  """Non-causal, unmasked multi-head attention with optional RoPE on q and k."""
  return _softmax_attention(apply_rope(q, q_rope), apply_rope(k, k_rope), v)


def hybrid_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  k_ref: jax.Array,
  v_ref: jax.Array,
  *,
  q_rope: Rope,
  k_rope: Rope,
  q_ref_rope: Rope,
  k_ref_rope: Rope,
) -> jax.Array:
  """Self-attention plus reference attention with separate softmaxes, summed (official main block
  with hybrid reference attention).
  """
  self_out = attention(q, k, v, q_rope=q_rope, k_rope=k_rope)
  ref_out = attention(q, k_ref, v_ref, q_rope=q_ref_rope, k_rope=k_ref_rope)
  return (self_out.astype(jnp.float32) + ref_out.astype(jnp.float32)).astype(v.dtype)
