"""Building blocks of the Wan2.1 causal video VAE, channels-last, with a functional causal cache.

Every temporal convolution is causal. Instead of the reference's mutable `feat_cache` list, each
layer takes the cache of its previous call and returns the new one: `y, cache = layer(x, cache)`.
`cache=None` means "first chunk": the history is zero frames, which is exactly the reference's
causal zero padding, and the returned cache already has its steady-state shape, so later chunks can
run under `lax.scan` with the cache as carry. Since every layer is per-frame or causal in time,
chunked processing equals processing the whole sequence at once (the reference relies on the same
property).

Shapes: activations (B,T,H,W,C); 3-D kernels (kt,kh,kw,C_in,C_out); 2-D kernels (kh,kw,C_in,C_out).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from o2a_jax.layers.conv import conv3d

CACHE_T = 2  # frames of history a 3-frame causal kernel needs


def _zeros_param(shape, dtype):
  # Values are always loaded from a checkpoint (or randomised by the caller); zeros keep init cheap.
  return nnx.Param(jnp.zeros(shape, dtype))


class CausalConv3d(nnx.Module):
  """Conv3d causal in time (history from the cache or zeros), 'same' zero padding in space."""

  def __init__(self, c_in: int, c_out: int, kernel: tuple[int, int, int], *, dtype, precision=None):
    self.kernel = tuple(kernel)
    self.weight = _zeros_param((*self.kernel, c_in, c_out), dtype)
    self.bias = _zeros_param((c_out,), dtype)
    self.precision = precision

  @property
  def history(self) -> int:
    return self.kernel[0] - 1

  def conv(self, x: jax.Array) -> jax.Array:
    """Valid in time, same in space; x already holds its temporal history."""
    _, kh, kw = self.kernel
    y = conv3d(
      x,
      self.weight[...].astype(x.dtype),
      padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
      precision=self.precision,
    )
    return y + self.bias[...].astype(y.dtype)

  def __call__(self, x: jax.Array, cache: jax.Array | None):
    """x (B,T,H,W,C_in), cache (B,kt-1,H,W,C_in) or None -> y (B,T,H,W,C_out), new cache."""
    n = self.history
    if n == 0:
      return self.conv(x), None
    if cache is None:
      cache = jnp.zeros((x.shape[0], n, *x.shape[2:]), x.dtype)
    full = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
    return self.conv(full), full[:, -n:]


class RMSNorm(nnx.Module):
  """`F.normalize` over channels times sqrt(C) * gamma, computed in float32."""

  def __init__(self, dim: int, *, dtype):
    self.gamma = nnx.Param(jnp.ones((dim,), dtype))
    self.scale = dim**0.5

  def __call__(self, x: jax.Array) -> jax.Array:
    xf = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(xf * xf, axis=-1, keepdims=True))
    # F.normalize divides by max(||x||, 1e-12).
    y = xf / jnp.maximum(norm, 1e-12) * self.scale * self.gamma[...].astype(jnp.float32)
    return y.astype(x.dtype)


def _conv2d(x, w, b, *, stride=1, padding, precision):
  """Per-frame 2-D conv: x (B,T,H,W,C) folded to (B*T,H,W,C)."""
  bsz, t = x.shape[:2]
  y = jax.lax.conv_general_dilated(
    x.reshape(bsz * t, *x.shape[2:]),
    w.astype(x.dtype),
    window_strides=(stride, stride),
    padding=padding,
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    precision=precision,
  )
  y = y + b.astype(y.dtype)
  return y.reshape(bsz, t, *y.shape[1:])


class Resample(nnx.Module):
  """Spatial x2 up/down sampling, optionally with the causal temporal x2 (`*3d` modes).

  Temporal rules of the reference (`WanResample`), expressed on the whole sequence:
  - `downsample3d`: out = [s_0, conv_t(s_0,s_1,s_2), conv_t(s_2,s_3,s_4), ...] (stride 2, no pad);
    the first chunk passes its single frame through, later chunks prepend the cached last frame.
  - `upsample3d`: frame 0 is not doubled; frames 1.. go through a causal (3,1,1) conv to 2C channels
    whose halves become two output frames. The conv's history starts with zeros, never with frame 0.
  """

  MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

  def __init__(self, dim: int, mode: str, *, dtype, precision=None):
    if mode not in self.MODES:
      raise ValueError(f"unknown resample mode {mode!r}; expected one of {self.MODES}")
    self.mode = mode
    self.precision = precision
    c_out = dim // 2 if mode.startswith("up") else dim
    self.weight = _zeros_param((3, 3, dim, c_out), dtype)
    self.bias = _zeros_param((c_out,), dtype)
    if mode == "upsample3d":
      self.time_conv = CausalConv3d(dim, 2 * dim, (3, 1, 1), dtype=dtype, precision=precision)
    elif mode == "downsample3d":
      self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), dtype=dtype, precision=precision)

  @property
  def cached(self) -> bool:
    return self.mode.endswith("3d")

  def __call__(self, x: jax.Array, cache, first: bool):
    if self.mode == "upsample3d":
      if first:
        # Reference "Rep": the first chunk skips the time conv; its history stays zeros.
        cache = jnp.zeros((x.shape[0], CACHE_T, *x.shape[2:]), x.dtype)
      else:
        y, cache = self.time_conv(x, cache)
        b, t, h, w, c2 = y.shape
        # Channel halves [0:C] and [C:2C] are frames 2t and 2t+1.
        x = (
          y.reshape(b, t, h, w, 2, c2 // 2).transpose(0, 1, 4, 2, 3, 5).reshape(b, 2 * t, h, w, -1)
        )
    if self.mode.startswith("up"):
      # nearest-exact x2 is a plain repeat; the reference upsamples in float32.
      x = jnp.repeat(jnp.repeat(x, 2, axis=2), 2, axis=3)
      x = _conv2d(
        x, self.weight[...], self.bias[...], padding=((1, 1), (1, 1)), precision=self.precision
      )
      return x, cache
    # ZeroPad2d((0, 1, 0, 1)) then a stride-2 3x3 conv.
    x = _conv2d(
      x,
      self.weight[...],
      self.bias[...],
      stride=2,
      padding=((0, 1), (0, 1)),
      precision=self.precision,
    )
    if self.mode == "downsample3d":
      if first:
        cache = x[:, -1:]
      else:
        full = jnp.concatenate([cache.astype(x.dtype), x], axis=1)
        cache = x[:, -1:]
        tc = self.time_conv
        x = conv3d(
          full, tc.weight[...].astype(x.dtype), strides=(2, 1, 1), precision=self.precision
        ) + tc.bias[...].astype(x.dtype)
    return x, cache


class ResidualBlock(nnx.Module):
  """RMS norm, SiLU, causal 3x3x3 conv (twice) plus a 1x1x1 shortcut when the width changes."""

  def __init__(self, c_in: int, c_out: int, *, dtype, precision=None):
    self.norm1 = RMSNorm(c_in, dtype=dtype)
    self.conv1 = CausalConv3d(c_in, c_out, (3, 3, 3), dtype=dtype, precision=precision)
    self.norm2 = RMSNorm(c_out, dtype=dtype)
    self.conv2 = CausalConv3d(c_out, c_out, (3, 3, 3), dtype=dtype, precision=precision)
    self.conv_shortcut = (
      CausalConv3d(c_in, c_out, (1, 1, 1), dtype=dtype, precision=precision)
      if c_in != c_out
      else None
    )

  def __call__(self, x: jax.Array, cache):
    c1, c2 = cache if cache is not None else (None, None)
    h = x if self.conv_shortcut is None else self.conv_shortcut(x, None)[0]
    x, c1 = self.conv1(jax.nn.silu(self.norm1(x)), c1)
    x, c2 = self.conv2(jax.nn.silu(self.norm2(x)), c2)  # dropout is 0 in the VAE
    return x + h, (c1, c2)


class AttentionBlock(nnx.Module):
  """Single-head self-attention over the H*W positions of each frame (no attention across time)."""

  def __init__(self, dim: int, *, dtype, precision=None):
    self.norm = RMSNorm(dim, dtype=dtype)
    self.to_qkv_weight = _zeros_param((dim, 3 * dim), dtype)
    self.to_qkv_bias = _zeros_param((3 * dim,), dtype)
    self.proj_weight = _zeros_param((dim, dim), dtype)
    self.proj_bias = _zeros_param((dim,), dtype)
    self.precision = precision

  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, h, w, c = x.shape
    y = self.norm(x).reshape(b * t, h * w, c)
    qkv = jnp.einsum(
      "BLC,CD->BLD", y, self.to_qkv_weight[...].astype(y.dtype), precision=self.precision
    )
    qkv = qkv + self.to_qkv_bias[...].astype(qkv.dtype)
    q, k, v = jnp.split(qkv, 3, axis=-1)  # channel order [q | k | v], as the reference's chunk(3)
    scores = jnp.einsum("BLC,BSC->BLS", q, k, precision=self.precision).astype(jnp.float32)
    probs = jax.nn.softmax(scores * c**-0.5, axis=-1).astype(v.dtype)
    o = jnp.einsum("BLS,BSC->BLC", probs, v, precision=self.precision)
    o = jnp.einsum(
      "BLC,CD->BLD", o, self.proj_weight[...].astype(o.dtype), precision=self.precision
    )
    o = o + self.proj_bias[...].astype(o.dtype)
    return x + o.reshape(b, t, h, w, c)


class MidBlock(nnx.Module):
  """Residual block, attention, residual block."""

  def __init__(self, dim: int, *, dtype, precision=None):
    self.resnets = nnx.List(
      [ResidualBlock(dim, dim, dtype=dtype, precision=precision) for _ in range(2)]
    )
    self.attention = AttentionBlock(dim, dtype=dtype, precision=precision)

  def __call__(self, x, cache):
    c0, c1 = cache if cache is not None else (None, None)
    x, c0 = self.resnets[0](x, c0)
    x = self.attention(x)
    x, c1 = self.resnets[1](x, c1)
    return x, (c0, c1)
