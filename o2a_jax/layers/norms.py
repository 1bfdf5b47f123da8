"""Normalisation layers with the official float32 numerics (official main block with hybrid
reference attention, official inference dtypes).

Dims: B batch, L tokens, D width, C channels, G groups.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(shape, init, axes, param_dtype, rngs=None):
  """An nnx.Param with logical axis names, initialised by `init(key, shape, dtype)`.

  Without `rngs` the key is None, so only deterministic initialisers (ones, zeros) work.
  """
  key = rngs.params() if rngs is not None else None
  return nnx.Param(init(key, shape, param_dtype), out_sharding=axes)


def layer_norm_f32(x: jax.Array, eps: float) -> jax.Array:
  """LayerNorm without affine over the last axis, computed and returned in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(var + eps)


class AffineLayerNorm(nnx.Module):
  """FP32LayerNorm with weight and bias (`norm2` before the text cross-attention)."""

  def __init__(self, dim: int, *, eps: float, param_dtype, rngs: nnx.Rngs):
    self.eps = eps
    self.scale = param((dim,), nnx.initializers.ones, ("embed",), param_dtype)
    self.bias = param((dim,), nnx.initializers.zeros, ("embed",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    y = layer_norm_f32(x, self.eps)
    return y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


class RMSNorm(nnx.Module):
  """diffusers RMSNorm over the last axis (across all heads): float32 statistics.

  As the official code: the normalised value is cast to the weight's dtype when that is a
  half type, then multiplied by the weight; the result is returned in `dtype`.
  """

  def __init__(self, dim: int, *, eps: float, dtype, param_dtype, rngs: nnx.Rngs):
    self.eps, self.dtype = eps, dtype
    self.scale = param((dim,), nnx.initializers.ones, ("heads",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), axis=-1, keepdims=True) + self.eps)
    w = self.scale[...]
    if w.dtype != jnp.float32:
      y = y.astype(w.dtype)
    return (y * w).astype(self.dtype)


class GroupNorm(nnx.Module):
  """torch.nn.GroupNorm over channels-last input (B, ..., C), float32 statistics.

  The statistics of a group span every non-batch axis, so on a (B, T, H, W, C) input they are
  joint over time as in the official 5-D pose encoder; apply it per frame for 2-D behaviour.
  """

  def __init__(self, channels: int, groups: int, *, eps: float, param_dtype, rngs: nnx.Rngs):
    self.groups, self.eps = groups, eps
    self.scale = param((channels,), nnx.initializers.ones, ("conv",), param_dtype)
    self.bias = param((channels,), nnx.initializers.zeros, ("conv",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    shape = x.shape
    xf = x.astype(jnp.float32).reshape(shape[0], -1, self.groups, shape[-1] // self.groups)
    mean = jnp.mean(xf, axis=(1, 3), keepdims=True)
    var = jnp.mean(jnp.square(xf - mean), axis=(1, 3), keepdims=True)
    y = ((xf - mean) * jax.lax.rsqrt(var + self.eps)).reshape(shape)
    y = y * self.scale[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)
    return y.astype(x.dtype)
