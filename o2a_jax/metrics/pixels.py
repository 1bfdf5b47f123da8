"""Pixel metrics of generated frames against the ground truth, in JAX: the project's one home
for them (`o2a eval`, the puppet evaluation, the demo, the VAE training report).

The DisCo protocol's frame metrics, on uint8 RGB (..., H, W, 3):
- `psnr`: one MSE over all pixels and frames, in dB (peak 255); float arrays with their
  `data_range` (e.g. 2.0 for [-1, 1] pixels) are accepted too.
- `ssim`: the scikit-image default: grayscale by the ITU-R 601 luma weights, a 7x7 uniform
  window, K1 = 0.01, K2 = 0.03, data range 255, sample covariances (x 49/48), the mean of the
  SSIM map over the window-valid region (skimage crops the 3-pixel border), averaged over frames.
- `l1`: mean absolute difference of pixels in [0, 1] (uint8 / 255).

Computed in float32 on the device; the (co)variances are taken of each frame centred on its
mean so that the window sums stay small (SSIM within 1e-6 of a float64 evaluation on noise,
smooth and dark images, `tests/metrics_test.py`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_LUMA = (0.299, 0.587, 0.114)
_WINDOW = 7


def _check_pair(a, b, *, floats: bool = False) -> tuple[np.ndarray, np.ndarray]:
  a, b = np.asarray(a), np.asarray(b)
  if floats:
    ok = a.dtype.kind == "f" and b.dtype.kind == "f"
    want = "two float"
  else:
    ok = a.dtype == np.uint8 and b.dtype == np.uint8
    want = "two uint8"
  if a.shape != b.shape or not ok or a.shape[-1] != 3:
    raise ValueError(
      f"metrics take {want} (..., H, W, 3) arrays of one shape, got {a.dtype}{a.shape} and "
      f"{b.dtype}{b.shape}"
    )
  return a, b


@jax.jit
def _mse(a, b):
  d = a.astype(jnp.float32) - b.astype(jnp.float32)
  return jnp.mean(d * d)


def psnr(a, b, *, data_range: float | None = None) -> float:
  """PSNR in dB of `a` against `b`: uint8 (peak 255) or, with `data_range`, float arrays."""
  a, b = _check_pair(a, b, floats=data_range is not None)
  peak = 255.0 if data_range is None else float(data_range)
  mse = float(_mse(a, b))
  return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


@jax.jit
def _l1(a, b):
  return jnp.mean(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))) / 255.0


def l1(a, b) -> float:
  """Mean absolute difference of uint8 `a` and `b` as [0, 1] pixels."""
  a, b = _check_pair(a, b)
  return float(_l1(a, b))


def _box(x):
  """Mean over 7x7 windows, valid positions only: (N, H, W) -> (N, H-6, W-6)."""
  s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, _WINDOW, _WINDOW), (1, 1, 1), "VALID")
  return s / (_WINDOW * _WINDOW)


@jax.jit
def _ssim_per_frame(a, b):
  luma = jnp.asarray(_LUMA, jnp.float32)
  x = a.astype(jnp.float32) @ luma  # (N, H, W)
  y = b.astype(jnp.float32) @ luma
  # (Co)variances are shift-invariant: take them of each frame centred on its mean, so the
  # float32 window sums stay small; the window means get the shift back.
  sx, sy = jnp.mean(x, axis=(1, 2), keepdims=True), jnp.mean(y, axis=(1, 2), keepdims=True)
  x, y = x - sx, y - sy
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  cov = _WINDOW**2 / (_WINDOW**2 - 1)
  ux, uy = _box(x), _box(y)
  vx = cov * (_box(x * x) - ux * ux)
  vy = cov * (_box(y * y) - uy * uy)
  vxy = cov * (_box(x * y) - ux * uy)
  mx, my = ux + sx, uy + sy  # the window means of the uncentred pixels
  s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=(-2, -1))


def ssim(a, b) -> float:
  """Mean SSIM of uint8 RGB `a` against `b` (skimage defaults on grayscale, module docstring)."""
  a, b = _check_pair(a, b)
  if a.shape[-2] < _WINDOW or a.shape[-3] < _WINDOW:
    raise ValueError(f"ssim needs frames of at least 7x7 pixels, got {a.shape[-3:-1]}")
  frames = a.reshape(-1, *a.shape[-3:]), b.reshape(-1, *b.shape[-3:])
  return float(jnp.mean(_ssim_per_frame(*frames)))
