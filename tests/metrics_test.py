"""Pixel metrics (`o2a_jax.metrics.pixels`) against their definitions written out here."""

from __future__ import annotations

import numpy as np
import pytest

from o2a_jax.metrics import pixels


def test_ssim_psnr_match_definitions():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (2, 16, 20, 3), dtype=np.uint8)
  assert pixels.ssim(a, a) == pytest.approx(1.0) and pixels.psnr(a, a) == float("inf")
  b = np.clip(a.astype(int) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
  mse = np.mean((a.astype(float) - b) ** 2)
  assert pixels.psnr(b, a) == pytest.approx(10 * np.log10(255**2 / mse))
  # SSIM of one 7x7 window, written out from the formula (sample covariance).
  x = (a[0, :7, :7].astype(float) @ [0.299, 0.587, 0.114]).ravel()
  y = (b[0, :7, :7].astype(float) @ [0.299, 0.587, 0.114]).ravel()
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  cxy = np.cov(x, y)
  want = ((2 * x.mean() * y.mean() + c1) * (2 * cxy[0, 1] + c2)) / (
    (x.mean() ** 2 + y.mean() ** 2 + c1) * (cxy[0, 0] + cxy[1, 1] + c2)
  )
  assert pixels.ssim(b[:1, :7, :7], a[:1, :7, :7]) == pytest.approx(want, rel=1e-9)
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
  assert pixels.psnr(b, a, data_range=2.0) == pytest.approx(10 * np.log10(4.0 / mse))
  u8 = lambda x: np.round((x + 1) * 127.5).astype(np.uint8)
  # The same images as uint8: PSNR agrees up to the rounding of the pixels.
  assert pixels.psnr(u8(b), u8(a)) == pytest.approx(pixels.psnr(b, a, data_range=2.0), abs=0.2)
