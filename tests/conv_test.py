"""`o2a_jax.layers.conv`: the per-tap and native 3-D strategies agree (values and gradients), the
choice follows the backend / scope / environment, and bad names are refused."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2a_jax.layers import conv


def _relerr(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _rand(shape, seed):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


@pytest.mark.parametrize(
  "kernel,strides,padding",
  [
    ((3, 3, 3), (1, 1, 1), ((1, 1), (1, 1))),  # the VAE's causal conv
    ((3, 1, 1), (2, 1, 1), "VALID"),  # the VAE's temporal downsampling
    ((3, 3, 3), (2, 2, 2), "VALID"),  # the pose encoder's strided conv
    ((1, 1, 1), (1, 1, 1), "VALID"),  # shortcut
  ],
)
@pytest.mark.parametrize("channels", [5, 16])  # 5 x 3 taps <= FOLD_MAX_CHANNELS: folded; 16: summed
def test_taps_equal_native(kernel, strides, padding, channels):
  x = _rand((2, 7, 9, 10, channels), 0)
  w = _rand((*kernel, channels, 6), 1)

  def f(x, w, name):
    with conv.strategy_scope(name):
      return conv.conv3d(x, w, strides=strides, padding=padding)

  want = f(x, w, "native")
  got = f(x, w, "taps")
  assert got.shape == want.shape
  assert _relerr(got, want) < 1e-6  # float32 summation order only
  g = _rand(want.shape, 2)
  vjp = lambda name: jax.vjp(lambda a, b: f(a, b, name), x, w)[1](g)
  for a, b in zip(vjp("taps"), vjp("native")):
    assert _relerr(a, b) < 1e-6


def test_strategy_choice(monkeypatch):
  monkeypatch.delenv(conv.ENV, raising=False)
  assert conv.strategy() == ("taps" if jax.default_backend() == "cpu" else "native")
  monkeypatch.setenv(conv.ENV, "native")
  assert conv.strategy() == "native"
  with conv.strategy_scope("taps"):  # a scope beats the environment
    assert conv.strategy() == "taps"
  assert conv.strategy() == "native"
  monkeypatch.setenv(conv.ENV, "fast")
  with pytest.raises(ValueError, match=r"\$O2A_CONV3D.*'fast'"):
    conv.strategy()
  with pytest.raises(ValueError, match="unknown 3-D convolution strategy"):
    with conv.strategy_scope("cudnn"):
      pass


def test_too_few_frames_is_named():
  with conv.strategy_scope("taps"), pytest.raises(ValueError, match="fewer than the 3-frame"):
    conv.conv3d(_rand((1, 2, 4, 4, 3), 0), _rand((3, 3, 3, 3, 3), 1))
