"""Spatial tiling plans for the VAE: overlapping tiles and their blending weights (numpy, static).

A tile axis of length `n` (latent pixels) is covered by tiles of `size` latent pixels with at least
`overlap` latent pixels shared by neighbours; the last tile is aligned to the end so every tile has
the same shape (one compiled tile program). In each overlap the outer 3/8 on either side gets weight
0 for the tile whose edge it is next to (values near a cut edge are wrong: the tile saw zero padding
there, and the error decays with the distance from the cut), and the middle quarter is a linear
ramp. The weights of all tiles sum to one at every position, and 2-D weights are the product of the
two axes' weights, so they sum to one as well."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class AxisPlan:
  """Tile origins (latent pixels) and the shared tile size along one axis."""

  origins: tuple[int, ...]
  size: int
  overlap: int

  def weights(self, scale: int) -> np.ndarray:
    """(n_tiles, size*scale) float32 blending weights at `scale` pixels per latent pixel."""
    return _axis_weights(self, scale)


def plan_axis(n: int, tile: int, overlap: int) -> AxisPlan:
  """Tiles of `tile` latent pixels, origins `tile - overlap` apart, the last one end-aligned."""
  if tile < 1 or overlap < 0 or overlap >= tile:
    raise ValueError(f"need tile >= 1 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
  if n <= tile:
    return AxisPlan((0,), n, 0)
  stride = tile - overlap
  origins = list(range(0, n - tile, stride)) + [n - tile]
  return AxisPlan(tuple(origins), tile, overlap)


def _axis_weights(plan: AxisPlan, scale: int) -> np.ndarray:
  size = plan.size * scale
  n = (plan.origins[-1] + plan.size) * scale
  total = plan.overlap * scale
  ramp = max(1, total // 4) if total else 0
  margin = (total - ramp) // 2
  centre = np.arange(size, dtype=np.float64) + 0.5
  rows = []
  for i in range(len(plan.origins)):
    w = np.ones(size)
    if ramp > 0:
      if i > 0:  # left edge is a cut, not the image border
        w = np.minimum(w, np.clip((centre - margin) / ramp, 0.0, 1.0))
      if i < len(plan.origins) - 1:
        w = np.minimum(w, np.clip((size - centre - margin) / ramp, 0.0, 1.0))
    rows.append(w)
  rows = np.stack(rows)
  total = np.zeros(n)
  for origin, w in zip(plan.origins, rows):
    total[origin * scale : origin * scale + size] += w
  if np.any(total <= 0):
    raise ValueError(f"tiling plan {plan} leaves positions without weight")
  for i, origin in enumerate(plan.origins):
    rows[i] /= total[origin * scale : origin * scale + size]
  return rows.astype(np.float32)
