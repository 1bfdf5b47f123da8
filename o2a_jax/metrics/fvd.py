"""Fréchet Video Distance (Unterthiner et al. 2018) with the Kinetics-400 I3D of `metrics.i3d`.

Protocol: each clip contributes its first `CLIP_FRAMES` (16) frames, resized to 224x224
(bilinear) and mapped to [-1, 1]; its embedding is I3D's 400 logits; FVD is the Fréchet distance
between Gaussians fitted to the embeddings of the generated and of the real clips (float64,
sample covariances). With few clips the covariances are rank-deficient and FVD is only a rough
estimate; published FVDs use hundreds of clips or more.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

CLIP_FRAMES = 16
SIZE = 224


@nnx.jit
def _logits(model, clips):
  b, f = clips.shape[:2]
  x = jax.image.resize(clips.astype(jnp.float32), (b, f, SIZE, SIZE, 3), "bilinear")
  return model(x / 127.5 - 1.0)


def embeddings(model, videos, *, batch: int = 2) -> np.ndarray:
  """I3D logits (N, 400) of uint8 videos: a sequence of (F >= 16, H, W, 3) arrays."""
  clips = []
  for i, v in enumerate(videos):
    v = np.asarray(v)
    if v.dtype != np.uint8 or v.ndim != 4 or v.shape[-1] != 3:
      raise ValueError(f"FVD takes uint8 (F, H, W, 3) videos; clip {i} is {v.dtype}{v.shape}")
    if len(v) < CLIP_FRAMES:
      raise ValueError(f"FVD uses {CLIP_FRAMES}-frame clips; clip {i} has {len(v)} frames")
    clips.append(v[:CLIP_FRAMES])
  out = []
  for i in range(0, len(clips), batch):
    group = clips[i : i + batch]
    if len({c.shape for c in group}) > 1:  # different sizes: one at a time
      out.extend(np.asarray(_logits(model, c[None])) for c in group)
    else:
      out.append(np.asarray(_logits(model, np.stack(group))))
  return np.concatenate(out).astype(np.float64)


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
  """Fréchet distance of Gaussians fitted to the rows of x and of y (N >= 2 each)."""
  if len(x) < 2 or len(y) < 2:
    raise ValueError(f"FVD needs at least 2 clips per side, got {len(x)} and {len(y)}")
  mx, my = x.mean(0), y.mean(0)
  cx, cy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  # tr sqrt(cx cy) = sum of sqrt of the eigenvalues of sqrt(cx) cy sqrt(cx) (symmetric PSD).
  w, v = np.linalg.eigh(cx)
  root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  inner = np.linalg.eigvalsh(root @ cy @ root)
  trace_sqrt = np.sum(np.sqrt(np.clip(inner, 0, None)))
  return float(np.sum((mx - my) ** 2) + np.trace(cx) + np.trace(cy) - 2 * trace_sqrt)


def fvd(model, generated, real, *, batch: int = 2) -> float:
  """FVD between two sequences of uint8 videos (see the module docstring)."""
  return frechet_distance(
    embeddings(model, generated, batch=batch), embeddings(model, real, batch=batch)
  )
