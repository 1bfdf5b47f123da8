"""The flow-matching Euler schedule of the official sampler (diffusers 0.33
`FlowMatchEulerDiscreteScheduler(shift, num_train_timesteps=1000)`, official flow-matching
scheduler).
"""

from __future__ import annotations

import numpy as np


def _shift(s, shift: float):
  return shift * s / (1 + (shift - 1) * s)


def sigmas(steps: int, shift: float = 7.0, train_steps: int = 1000) -> np.ndarray:
  """steps + 1 float32 sigmas, from 1 down to the last positive sigma, then 0.

  As the official scheduler: the training sigmas i/1000 are shifted once to find sigma_min,
  the inference grid is linear in timestep between 1000 * sigma_max and 1000 * sigma_min, and
  that grid is shifted again.
  """
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if shift <= 0:
    raise ValueError(f"shift must be positive, got {shift}")
  base = np.float32(_shift(np.float32(1.0 / train_steps), shift))  # sigma_min, float32
  t = np.linspace(train_steps * 1.0, train_steps * float(base), steps, dtype=np.float64)
  s = _shift(t / train_steps, shift).astype(np.float32)
  return np.concatenate([s, np.zeros(1, np.float32)])
