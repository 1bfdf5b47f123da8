"""Timestep, text and patch embeddings, unpatchify, and the 3-D RoPE tables.

Dims: B batch, T latent frames, H/W height/width, C channels, L tokens, S text tokens, D width,
K head dim.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.dims import dims
from o2a_jax.layers.linear import dense
from o2a_jax.layers.norms import param


@dims(t="B", returns="B _")
def sinusoid(t: jax.Array, dim: int, max_period: float = 10000.0) -> jax.Array:
  """diffusers `Timesteps(dim, flip_sin_to_cos=True, downscale_freq_shift=0)`: [cos | sin], f32."""
  half = dim // 2
  exponent = -math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half
  args = t.astype(jnp.float32)[:, None] * jnp.exp(exponent)[None, :]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class TimeEmbedding(nnx.Module):
  """Sinusoid -> linear_1 -> SiLU -> linear_2 (temb); SiLU -> time_proj (6 x D modulation)."""

  def __init__(self, freq_dim: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.freq_dim, self.dtype = freq_dim, dtype
    self.linear_1 = dense(freq_dim, dim, (None, "embed"), **kw)
    self.linear_2 = dense(dim, dim, ("embed", None), **kw)
    self.time_proj = dense(dim, 6 * dim, ("embed", None), **kw)

  @dims(t="B")
  def __call__(self, t: jax.Array) -> tuple[jax.Array, jax.Array]:
    """t (B,) -> temb (B, D), tproj (B, 6, D), both in the compute dtype."""
    emb = sinusoid(t, self.freq_dim).astype(self.dtype)
    temb = self.linear_2(jax.nn.silu(self.linear_1(emb)))
    tproj = self.time_proj(jax.nn.silu(temb))
    return temb, tproj.reshape(t.shape[0], 6, -1)


class TextProjection(nnx.Module):
  """PixArtAlphaTextProjection: Linear -> GELU(tanh) -> Linear."""

  def __init__(self, text_dim: int, dim: int, *, dtype, param_dtype, rngs: nnx.Rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.linear_1 = dense(text_dim, dim, (None, "embed"), **kw)
    self.linear_2 = dense(dim, dim, ("embed", None), **kw)

  @dims(x="B S _", returns="B S D")
  def __call__(self, x: jax.Array) -> jax.Array:
    return self.linear_2(jax.nn.gelu(self.linear_1(x), approximate=True))


class PatchEmbed(nnx.Module):
  """Conv3d with kernel = stride = (1, p, p) as a dense map over flattened patches.

  kernel (1, p, p, C, D) is the Flax conv layout of the PyTorch (D, C, 1, p, p) weight.
  """

  def __init__(self, in_channels: int, dim: int, patch: int, *, dtype, param_dtype, rngs):
    self.patch, self.dtype = patch, dtype
    fan_in = in_channels * patch * patch
    bound = 1.0 / math.sqrt(fan_in)
    init = lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound)
    self.kernel = param(
      (1, patch, patch, in_channels, dim),
      init,
      (None, None, None, "conv", "embed"),
      param_dtype,
      rngs,
    )
    self.bias = param((dim,), nnx.initializers.zeros, ("embed",), param_dtype)

  @dims(x="B T _ _ C", returns="B T _ _ D")
  def __call__(self, x: jax.Array) -> jax.Array:
    """x (B, T, H, W, C) -> tokens (B, T, H/p, W/p, D)."""
    b, t, h, w, c = x.shape
    p = self.patch
    if h % p or w % p:
      raise ValueError(f"latent size {h}x{w} is not divisible by the patch size {p}")
    x = x.astype(self.dtype).reshape(b, t, h // p, p, w // p, p, c)
    y = jnp.einsum("BTHpWqC,pqCD->BTHWD", x, self.kernel[0].astype(self.dtype))
    return y + self.bias[...].astype(self.dtype)


@dims(y="B L _", returns="B T H W C")
def unpatchify(y: jax.Array, grid: tuple[int, int, int], patch: int, channels: int) -> jax.Array:
  """(B, L, p*p*C) with features ordered (ph, pw, C) -> (B, T, H*p, W*p, C)."""
  t, h, w = grid
  y = y.reshape(y.shape[0], t, h, w, patch, patch, channels)
  y = y.transpose(0, 1, 2, 4, 3, 5, 6)  # B T H ph W pw C
  return y.reshape(y.shape[0], t, h * patch, w * patch, channels)


def rope_axis_dims(head_dim: int) -> tuple[int, int, int]:
  """Channel split (t, h, w) of a head: h = w = 2 * (K // 6), t = the rest (44/42/42 at 128)."""
  hw = 2 * (head_dim // 6)
  return head_dim - 2 * hw, hw, hw


def _axis_angles(dim: int, length: int, theta: float) -> np.ndarray:
  """float64 angles pos * freq_k, freq_k = theta^(-2k/dim), for pos in [0, length)."""
  freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64)[: dim // 2] / dim)
  return np.outer(np.arange(length, dtype=np.float64), freqs)


def rope_tables(
  grid: tuple[int, int, int],
  head_dim: int,
  *,
  theta: float = 10000.0,
  max_len: int = 1024,
  frame_offset: int = 0,
  zero_time: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """cos/sin tables (L, K/2) float32 for tokens of a (T, H, W) grid in (t, y, x) row-major order.

  Pair j of a head is rotated by the angle of its axis: pairs [0, t/2) by the frame index,
  then [t/2, t/2 + h/2) by the row and the rest by the column (Wan's `WanRotaryPosEmbed`).
  `zero_time` gives frame index 0 to every token: the reference branch of the hybrid attention
  and the reference extractor leave the temporal channels unrotated, which is exactly that.
  Angles are computed in float64 (as the official tables) and rounded once to float32.
  """
  t, h, w = grid
  if max(t + frame_offset, h, w) > max_len:
    raise ValueError(f"token grid {grid} exceeds the RoPE table length {max_len}")
  dt, dh, dw = rope_axis_dims(head_dim)
  at = _axis_angles(dt, max_len, theta)[frame_offset : frame_offset + t]
  if zero_time:
    at = np.zeros_like(at)
  ah = _axis_angles(dh, max_len, theta)[:h]
  aw = _axis_angles(dw, max_len, theta)[:w]
  # Per-axis tables are small; broadcast them to the token grid in jnp, not as big constants.
  parts = []
  for fn in (np.cos, np.sin):
    ct = jnp.asarray(fn(at), jnp.float32)[:, None, None, :]
    ch = jnp.asarray(fn(ah), jnp.float32)[None, :, None, :]
    cw = jnp.asarray(fn(aw), jnp.float32)[None, None, :, :]
    full = jnp.concatenate(
      [
        jnp.broadcast_to(ct, (t, h, w, ct.shape[-1])),
        jnp.broadcast_to(ch, (t, h, w, ch.shape[-1])),
        jnp.broadcast_to(cw, (t, h, w, cw.shape[-1])),
      ],
      axis=-1,
    )
    parts.append(full.reshape(t * h * w, head_dim // 2))
  return parts[0], parts[1]


def interleaved_to_rotate_half(head_dim: int) -> np.ndarray:
  """Channel permutation of a head: new[j] = old[2j], new[K/2 + j] = old[2j + 1]."""
  return np.concatenate([np.arange(0, head_dim, 2), np.arange(1, head_dim, 2)])
