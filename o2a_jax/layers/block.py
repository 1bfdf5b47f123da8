"""The Wan transformer block with six-way adaLN modulation, as main, pose or extractor block.

Dims: B batch, L tokens, S text tokens, D width, M MLP hidden.

One class serves the three block kinds of the model (official reference extractor, official pose
path, official main block with hybrid reference attention):
- main blocks: self-attention + HRFA, text cross-attention (`norm2`, `attn2`), FFN;
- pose blocks and extractor blocks: self-attention and FFN only.
Numerics follow the official block: modulation and norms in float32, the residual stream in
the compute dtype, the gate products in float32 before the cast back.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from o2a_jax import sharding
from o2a_jax.dims import dims
from o2a_jax.layers.attention import Attention, Rope
from o2a_jax.layers.linear import dense
from o2a_jax.layers.norms import AffineLayerNorm, layer_norm_f32, param

ACT = ("act_batch", "act_tokens", "act_embed")


class TokenReplace(NamedTuple):
  """TokenReplace: the tokens in `mask` (L,) (the latent frames kept clean) take the modulation of
  `tproj` (B, 6, D) in the blocks and `temb` (B, D) in the output head, made from t = 0 (or from
  a sample's own t where TokenReplace is off for it)."""

  tproj: jax.Array
  temb: jax.Array
  mask: jax.Array


def modulation(table: jax.Array, tproj: jax.Array, tr: TokenReplace | None) -> list[jax.Array]:
  """(table + tproj) split into its n parts, float32, each (B, 1, D) or, with TokenReplace,
  (B, L, D) where the tokens of `tr.mask` take the modulation of `tr.tproj`."""
  n = table.shape[-2]
  base = table.astype(jnp.float32) + tproj.astype(jnp.float32)  # B n D
  parts = [base[:, i : i + 1] for i in range(n)]
  if tr is None:
    return parts
  alt = table.astype(jnp.float32) + tr.tproj.astype(jnp.float32)
  mask = tr.mask[None, :, None]
  return [jnp.where(mask, alt[:, i : i + 1], p) for i, p in enumerate(parts)]


class Block(nnx.Module):
  """A Wan DiT block; `cross_attn` adds the text branch, `ref_attn` the HRFA branch."""

  def __init__(
    self,
    dim: int,
    num_heads: int,
    ffn_dim: int,
    *,
    cross_attn: bool,
    ref_attn: bool,
    eps: float,
    dtype,
    param_dtype,
    attn_impl: str,
    rngs: nnx.Rngs,
  ):
    self.eps, self.dtype, self.cross_attn = eps, dtype, cross_attn
    kw = dict(eps=eps, dtype=dtype, param_dtype=param_dtype, attn_impl=attn_impl, rngs=rngs)
    init = lambda key, shape, dt: (jax.random.normal(key, shape, dt) / dim**0.5).astype(dt)
    self.scale_shift_table = param((1, 6, dim), init, (None, None, "embed"), param_dtype, rngs)
    self.attn1 = Attention(dim, num_heads, with_ref=ref_attn, **kw)
    if cross_attn:
      self.norm2 = AffineLayerNorm(dim, eps=eps, param_dtype=param_dtype, rngs=rngs)
      self.attn2 = Attention(dim, num_heads, with_ref=False, **kw)
    dkw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.ffn_in = dense(dim, ffn_dim, ("embed", "mlp"), **dkw)
    self.ffn_out = dense(ffn_dim, dim, ("mlp", "embed"), **dkw)

  @dims(h="B L D", tproj="B _ D", text="B S D", ref="B _ D", returns="B L D")
  def __call__(
    self,
    h: jax.Array,
    tproj: jax.Array,
    *,
    rope: Rope,
    text: jax.Array | None = None,
    ref: jax.Array | None = None,
    q_ref_rope: Rope | None = None,
    k_ref_rope: Rope | None = None,
    tr: TokenReplace | None = None,
  ) -> jax.Array:
    """h (B, L, D) in the compute dtype; tproj (B, 6, D) -> (B, L, D)."""
    shift, scale, gate, c_shift, c_scale, c_gate = modulation(
      self.scale_shift_table[...], tproj, tr
    )
    dt = h.dtype
    n = (layer_norm_f32(h, self.eps) * (1 + scale) + shift).astype(dt)
    a = self.attn1(n, rope=rope, ref=ref, q_ref_rope=q_ref_rope, k_ref_rope=k_ref_rope)
    h = (h.astype(jnp.float32) + a.astype(jnp.float32) * gate).astype(dt)
    h = sharding.constrain(h, ACT)
    if self.cross_attn:
      if text is None:
        raise ValueError("this block has text cross-attention but no text embeddings were given")
      n = self.norm2(h).astype(dt)
      h = h + self.attn2(n, text).astype(dt)
    n = (layer_norm_f32(h, self.eps) * (1 + c_scale) + c_shift).astype(dt)
    f = self.ffn_out(jax.nn.gelu(self.ffn_in(n), approximate=True))
    h = (h.astype(jnp.float32) + f.astype(jnp.float32) * c_gate).astype(dt)
    return sharding.constrain(h, ACT)
