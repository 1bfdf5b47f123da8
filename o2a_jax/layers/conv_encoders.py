"""The convolutional condition encoders: the causal 3-D pose encoder and the 2-D prefix encoder.

Dims: B batch, F frames (pixel frames, fewer after each temporal downsampling), T latent frames,
H/W height/width, C channels, D width.

- `PoseEncoder` (official `input_hint_block`, a MiniHunyuanEncoder, official pose path): causal 3-D
  convolutions with replicate padding (T: 2 before, 0 after; H, W: 1 and 1), GroupNorm whose
  statistics span channels-in-group, time and space jointly, four down stages (x2 in space each,
  x2 in time where configured) and a zero-initialised output conv to the model width.
- `PrefixEncoder` (official `image_to_cond`, a MiniEncoder2D, official reference prefix frame):
  per-frame 2-D convolutions with zero padding and per-frame GroupNorm; no downsampling;
  zero-initialised output conv. It turns the 32-channel reference latents into the 16-channel prefix
  frame.

Under a mesh both encoders keep their activations sharded over the batch only (`_BATCH_ONLY`,
at input and output). Left to propagation, the partitioner takes the token sharding of the
sequence they feed (context, and tensor beside it) back into their spatial dimensions, and on
the (data, fsdp, context, tensor) = (1, 2, 2, 2) mesh the spatially partitioned convolution's
weight gradient came out doubled (measured on `image_to_cond.conv_out`: exactly 2x, the
forward right). They are small next to the transformer, so nothing is lost by not splitting them.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from o2a_jax import sharding
from o2a_jax.dims import dims
from o2a_jax.layers.conv import conv3d
from o2a_jax.layers.norms import GroupNorm, param

_BATCH_ONLY = ("act_batch", None, None, None, None)  # B T H W C


class Conv(nnx.Module):
  """N-d convolution, channels-last, kernel (*k, C_in, C_out); no implicit padding."""

  def __init__(
    self, cin, cout, kernel, *, stride=None, zero=False, out_axis=None, dtype, param_dtype, rngs
  ):
    kernel = tuple(kernel)
    self.stride = tuple(stride or (1,) * len(kernel))
    self.dtype = dtype
    bound = 1.0 / math.sqrt(cin * math.prod(kernel))  # PyTorch's default conv init
    init = (
      nnx.initializers.zeros
      if zero
      else lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound)
    )
    axes = (None,) * len(kernel) + ("conv", out_axis or "conv")
    self.kernel = param(kernel + (cin, cout), init, axes, param_dtype, rngs)
    bias_init = (
      nnx.initializers.zeros
      if zero
      else lambda key, shape, dt: jax.random.uniform(key, shape, dt, -bound, bound)
    )
    self.bias = param((cout,), bias_init, (out_axis or "conv",), param_dtype, rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    nd = self.kernel.ndim - 2
    x, w = x.astype(self.dtype), self.kernel[...].astype(self.dtype)
    if nd == 3:  # the backend's 3-D strategy (o2a_jax/layers/conv.py)
      y = conv3d(x, w, strides=self.stride, preferred_element_type=jnp.float32)
    else:
      spatial = "THW"[-nd:]
      dn = ("N" + spatial + "C", spatial + "IO", "N" + spatial + "C")
      y = jax.lax.conv_general_dilated(
        x, w, self.stride, "VALID", dimension_numbers=dn, preferred_element_type=jnp.float32
      )
    return (y + self.bias[...].astype(jnp.float32)).astype(self.dtype)


def causal_pad(x: jax.Array) -> jax.Array:
  """Replicate padding of (B, F, H, W, C): two frames before, one pixel around."""
  return jnp.pad(x, ((0, 0), (2, 0), (1, 1), (1, 1), (0, 0)), mode="edge")


def zero_pad_2d(x: jax.Array) -> jax.Array:
  return jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))


class _Resnet(nnx.Module):
  """GN -> SiLU -> conv -> GN -> SiLU -> conv, plus the input (in = out channels)."""

  def __init__(self, ch, groups, kernel, *, dtype, param_dtype, rngs):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.norm1 = GroupNorm(ch, groups, eps=1e-6, param_dtype=param_dtype, rngs=rngs)
    self.conv1 = Conv(ch, ch, kernel, **kw)
    self.norm2 = GroupNorm(ch, groups, eps=1e-6, param_dtype=param_dtype, rngs=rngs)
    self.conv2 = Conv(ch, ch, kernel, **kw)

  def __call__(self, x, pad):
    h = self.conv1(pad(jax.nn.silu(self.norm1(x))))
    h = self.conv2(pad(jax.nn.silu(self.norm2(h))))
    return x + h


class PoseEncoder(nnx.Module):
  """Pose video (B, F, H, W, 3) in [-1, 1] -> features (B, T, H/16, W/16, D)."""

  def __init__(
    self,
    dim: int,
    channels: tuple[int, ...],
    groups: int,
    time_down: tuple[bool, ...],
    *,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype
    self.conv_in = Conv(3, channels[0], (3, 3, 3), **kw)
    self.resnets = nnx.List()
    self.downs = nnx.List()
    for i, ch in enumerate(channels):
      cin = channels[i - 1] if i else channels[0]
      if cin != ch:
        raise ValueError("pose encoder stages must keep their channel count (as released)")
      self.resnets.append(_Resnet(ch, groups, (3, 3, 3), **kw))
      stride = (2 if time_down[i] else 1, 2, 2)
      self.downs.append(Conv(ch, ch, (3, 3, 3), stride=stride, **kw))
    self.conv_out = Conv(channels[-1], dim, (3, 3, 3), zero=True, out_axis="embed", **kw)

  @dims(x="B F H W 3", returns="B T _ _ D")
  def __call__(self, x: jax.Array) -> jax.Array:
    x = sharding.constrain(x.astype(self.dtype), _BATCH_ONLY)
    h = self.conv_in(causal_pad(x))
    for resnet, down in zip(self.resnets, self.downs):
      h = resnet(h, causal_pad)
      h = down(causal_pad(h))
    return sharding.constrain(self.conv_out(causal_pad(h)), _BATCH_ONLY)


class PrefixEncoder(nnx.Module):
  """Reference latents (B, 1, H, W, 32) -> the prefix latent frame (B, 1, H, W, 16)."""

  def __init__(
    self,
    cin: int,
    ch: int,
    blocks: int,
    groups: int,
    cout: int,
    *,
    dtype,
    param_dtype,
    rngs: nnx.Rngs,
  ):
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.dtype = dtype
    self.conv_in = Conv(cin, ch, (3, 3), **kw)
    self.resnets = nnx.List([_Resnet(ch, groups, (3, 3), **kw) for _ in range(blocks)])
    self.conv_out = Conv(ch, cout, (3, 3), zero=True, **kw)

  @dims(x="B T H W _", returns="B T H W _")
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t = x.shape[:2]
    x = sharding.constrain(x, _BATCH_ONLY)
    # Frames fold into the batch: the 2-D convs and GroupNorm then act per frame.
    h = self.conv_in(zero_pad_2d(x.astype(self.dtype).reshape(b * t, *x.shape[2:])))
    for resnet in self.resnets:
      h = resnet(h, zero_pad_2d)
    h = self.conv_out(zero_pad_2d(h))
    return sharding.constrain(h.reshape(b, t, *h.shape[1:]), _BATCH_ONLY)
