"""Pixel metrics of generated frames against the ground truth, one home for the project.

- `psnr`: one MSE over all pixels and frames, in dB; uint8 arrays (peak 255), or float arrays with
  their `data_range` given (e.g. 2.0 for [-1, 1] pixels).
- `ssim`: the scikit-image default on uint8 RGB (..., H, W, 3): grayscale by the ITU-R 601 luma
  weights, a 7x7 uniform window, K1 = 0.01, K2 = 0.03, data range 255, sample covariances
  (x 49/48), the mean of the SSIM map over the window-valid region (skimage crops the 3-pixel
  border), averaged over frames.

Written in NumPy float64.
"""

from __future__ import annotations

import numpy as np


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


def psnr(a, b, *, data_range: float | None = None) -> float:
  """PSNR in dB of `a` against `b`: uint8 (peak 255) or, with `data_range`, float arrays."""
  a, b = _check_pair(a, b, floats=data_range is not None)
  peak = 255.0 if data_range is None else float(data_range)
  mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
  return float("inf") if mse == 0 else float(10.0 * np.log10(peak**2 / mse))


def _gray(x: np.ndarray) -> np.ndarray:
  return x.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _box7(x: np.ndarray) -> np.ndarray:
  """Mean over 7x7 windows, valid positions only: (..., H, W) -> (..., H-6, W-6)."""
  k = 7
  c = np.cumsum(np.cumsum(x, axis=-1), axis=-2)
  c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
  s = c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]
  return s / (k * k)


def ssim(a, b) -> float:
  """Mean SSIM of uint8 RGB `a` against `b` (skimage defaults on grayscale, see the docstring)."""
  a, b = _check_pair(a, b)
  x, y = _gray(a), _gray(b)
  if x.shape[-1] < 7 or x.shape[-2] < 7:
    raise ValueError(f"ssim needs frames of at least 7x7 pixels, got {x.shape[-2:]}")
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  cov = 49.0 / 48.0
  ux, uy = _box7(x), _box7(y)
  vx = cov * (_box7(x * x) - ux * ux)
  vy = cov * (_box7(y * y) - uy * uy)
  vxy = cov * (_box7(x * y) - ux * uy)
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
  return float(np.mean(s.reshape(-1, *s.shape[-2:]).mean(axis=(-2, -1))))
