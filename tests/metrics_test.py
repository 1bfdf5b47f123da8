"""Pixel metrics (`o2a_jax.metrics.pixels`, float32 JAX) against their definitions written out
here in float64 NumPy (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from o2a_jax.metrics import pixels


def _box7(x):
  k = 7
  c = np.cumsum(np.cumsum(x, axis=-1), axis=-2)
  c = np.pad(c, [(0, 0)] * (x.ndim - 2) + [(1, 0), (1, 0)])
  return (c[..., k:, k:] - c[..., :-k, k:] - c[..., k:, :-k] + c[..., :-k, :-k]) / (k * k)


def ssim_oracle(a, b) -> float:
  """The skimage-default SSIM of the module docstring, float64."""
  x = a.astype(np.float64) @ [0.299, 0.587, 0.114]
  y = b.astype(np.float64) @ [0.299, 0.587, 0.114]
  c1, c2, cov = (0.01 * 255) ** 2, (0.03 * 255) ** 2, 49 / 48
  ux, uy = _box7(x), _box7(y)
  vx, vy = cov * (_box7(x * x) - ux * ux), cov * (_box7(y * y) - uy * uy)
  vxy = cov * (_box7(x * y) - ux * uy)
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
  return float(np.mean(s.reshape(-1, *s.shape[-2:]).mean(axis=(-2, -1))))


@pytest.mark.parametrize("kind", ["noise", "smooth", "dark"])
def test_ssim_matches_the_float64_oracle(kind):
  rng = np.random.default_rng(2)
  if kind == "noise":  # the worst case for window variances
    a = rng.integers(0, 256, (3, 40, 52, 3), dtype=np.uint8)
  else:
    yy, xx = np.mgrid[:40, :52]
    base = 128 + 100 * np.sin(xx / 7.0)[None, ..., None] * np.cos(yy / 9.0)[None, ..., None]
    base = base * (0.1 if kind == "dark" else 1.0)
    a = np.clip(base + rng.normal(0, 3, (3, 40, 52, 3)), 0, 255).astype(np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-25, 26, a.shape), 0, 255).astype(np.uint8)
  assert abs(pixels.ssim(b, a) - ssim_oracle(b, a)) < 1e-6
  assert abs(pixels.ssim(a, a) - 1.0) < 1e-6


def test_ssim_psnr_match_definitions():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (2, 16, 20, 3), dtype=np.uint8)
  assert pixels.ssim(a, a) == pytest.approx(1.0) and pixels.psnr(a, a) == float("inf")
  b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
  mse = np.mean((a.astype(float) - b) ** 2)
  assert pixels.psnr(b, a) == pytest.approx(10 * np.log10(255**2 / mse), rel=1e-6)
  assert pixels.l1(b, a) == pytest.approx(np.mean(np.abs(a.astype(float) - b)) / 255, rel=1e-6)
  # SSIM of one 7x7 window, written out from the formula (sample covariance).
  x = (a[0, :7, :7].astype(float) @ [0.299, 0.587, 0.114]).ravel()
  y = (b[0, :7, :7].astype(float) @ [0.299, 0.587, 0.114]).ravel()
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  cxy = np.cov(x, y)
  want = ((2 * x.mean() * y.mean() + c1) * (2 * cxy[0, 1] + c2)) / (
    (x.mean() ** 2 + y.mean() ** 2 + c1) * (cxy[0, 0] + cxy[1, 1] + c2)
  )
  # float32 on the device (the float64 oracle above agrees with this formula to rounding)
  assert pixels.ssim(b[:1, :7, :7], a[:1, :7, :7]) == pytest.approx(want, rel=1e-6)
  assert ssim_oracle(b[:1, :7, :7], a[:1, :7, :7]) == pytest.approx(want, rel=1e-12)
  assert 0 < pixels.ssim(b, a) < 1
  with pytest.raises(ValueError, match="uint8"):
    pixels.psnr(a.astype(np.float32), a)
  with pytest.raises(ValueError, match="float"):
    pixels.psnr(a, a, data_range=255.0)


def test_psnr_of_float_pixels_with_their_range():
  rng = np.random.default_rng(1)
  a = rng.uniform(-1, 1, (3, 8, 8, 3))
  b = np.clip(a + rng.normal(0, 0.05, a.shape), -1, 1)
  mse = np.mean((a - b) ** 2)
  assert pixels.psnr(b, a, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / mse), rel=1e-6)
  u8 = lambda x: np.round((x + 1) * 127.5).astype(np.uint8)
  # The same images as uint8: PSNR agrees up to the rounding of the pixels.
  assert pixels.psnr(u8(b), u8(a)) == pytest.approx(pixels.psnr(b, a, data_range=2.0), abs=0.2)
