"""Procedural motions: per-frame joint angles for walk, wave, turn and dance (and a still pose).

Each generator maps (numpy Generator, frame count, fps) to a dict of (N,) arrays over
`skeleton.ANGLE_KEYS`; all randomness (speed, amplitude, phase, facing, drift) comes from the
Generator, so a motion is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np

from o2a_jax.puppet.skeleton import ANGLE_KEYS, REST

MOTIONS = ("walk", "wave", "turn", "dance")


def _rest(n: int) -> dict[str, np.ndarray]:
  return {k: np.full(n, REST[k], np.float64) for k in ANGLE_KEYS}


def _facing(rng: np.random.Generator) -> float:
  """A body yaw: mostly frontal, sometimes three-quarter or profile."""
  base = rng.choice([0.0, 0.0, 0.6, -0.6, 1.4, -1.4])
  return float(base + rng.uniform(-0.25, 0.25))


def walk(rng: np.random.Generator, n: int, fps: float) -> dict[str, np.ndarray]:
  a = _rest(n)
  t = np.arange(n) / fps
  f = rng.uniform(0.7, 1.2)  # strides per second
  ph = 2 * np.pi * f * t + rng.uniform(0, 2 * np.pi)
  amp = rng.uniform(0.3, 0.55)
  yaw = _facing(rng)
  a["yaw"][:] = yaw
  for s, sign in (("l", 1.0), ("r", -1.0)):
    swing = sign * amp * np.sin(ph)
    a[f"hip_flex_{s}"] = swing
    a[f"knee_{s}"] = 0.1 + 0.9 * amp * np.clip(np.sin(ph * sign + 1.3 * sign), 0, None)
    a[f"shoulder_flex_{s}"] = -0.8 * swing
    a[f"elbow_flex_{s}"] = -0.8 * swing + 0.25 + 0.15 * amp * (1 + np.sin(ph))
    a[f"elbow_abd_{s}"] = a[f"shoulder_abd_{s}"] + 0.05
  a["root_y"] = 0.02 * np.abs(np.sin(ph))
  a["root_x"] = np.sin(yaw) * rng.uniform(0.05, 0.25) * (t - t.mean())  # slow drift
  a["head_yaw"] = 0.1 * np.sin(0.5 * ph)
  return a


def wave(rng: np.random.Generator, n: int, fps: float) -> dict[str, np.ndarray]:
  a = _rest(n)
  t = np.arange(n) / fps
  s = "l" if rng.random() < 0.5 else "r"
  raise_t = rng.uniform(0.15, 0.6)
  up = np.clip(t / raise_t, 0, 1)
  up = up * up * (3 - 2 * up)  # smoothstep
  f = rng.uniform(1.2, 2.5)
  osc = rng.uniform(0.25, 0.5) * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
  a[f"shoulder_abd_{s}"] = REST["shoulder_abd_l"] + up * (rng.uniform(1.2, 1.7) - 0.15)
  a[f"shoulder_flex_{s}"] = up * rng.uniform(0.0, 0.4)
  a[f"elbow_abd_{s}"] = REST["elbow_abd_l"] + up * (rng.uniform(2.5, 2.9) - 0.15 + osc)
  a[f"elbow_flex_{s}"] = 0.2 * (1 - up)
  a[f"curl_{s}"] = 0.4 * (1 - up) + 0.05
  a[f"spread_{s}"] = 0.15 + 0.35 * up
  other = "r" if s == "l" else "l"
  a[f"shoulder_flex_{other}"] = 0.1 * np.sin(2 * np.pi * 0.4 * t)
  a["yaw"][:] = rng.uniform(-0.6, 0.6)
  a["head_roll"] = 0.12 * up * np.sin(2 * np.pi * f * t / 2)
  a["head_yaw"] = up * rng.uniform(-0.3, 0.3)
  a["lean"] = 0.04 * np.sin(2 * np.pi * 0.5 * t)
  return a


def turn(rng: np.random.Generator, n: int, fps: float) -> dict[str, np.ndarray]:
  a = _rest(n)
  t = np.arange(n) / fps
  start = rng.uniform(-0.5, 0.5)
  total = rng.choice([-1, 1]) * rng.uniform(1.5, 3.6)
  u = np.clip((t - 0.1 * t[-1]) / max(0.8 * t[-1], 1e-6), 0, 1)
  u = u * u * (3 - 2 * u)
  a["yaw"] = start + total * u
  a["head_yaw"] = 0.25 * np.sign(total) * np.sin(np.pi * u)  # the head leads the turn
  step = 2 * np.pi * 1.5 * t
  for s, sign in (("l", 1.0), ("r", -1.0)):
    a[f"hip_flex_{s}"] = 0.15 * np.sin(np.pi * u) * np.sin(step) * sign
    a[f"knee_{s}"] = 0.05 + 0.25 * np.sin(np.pi * u) * np.clip(np.sin(step) * sign, 0, None)
    a[f"shoulder_abd_{s}"] = 0.15 + 0.2 * np.sin(np.pi * u)
  return a


def dance(rng: np.random.Generator, n: int, fps: float) -> dict[str, np.ndarray]:
  a = _rest(n)
  t = np.arange(n) / fps
  w = 2 * np.pi * rng.uniform(0.8, 1.6)
  for s in "lr":
    p = rng.uniform(0, 2 * np.pi)
    a[f"shoulder_abd_{s}"] = rng.uniform(0.4, 1.4) + rng.uniform(0.3, 0.9) * np.sin(w * t + p)
    a[f"shoulder_flex_{s}"] = rng.uniform(-0.2, 0.5) + 0.3 * np.sin(w * t + p + 1.0)
    a[f"elbow_abd_{s}"] = a[f"shoulder_abd_{s}"] + rng.uniform(0.2, 1.4) * (
      0.5 + 0.5 * np.sin(2 * w * t + p)
    )
    a[f"elbow_flex_{s}"] = rng.uniform(0.0, 0.8) + 0.3 * np.sin(w * t + p)
    a[f"curl_{s}"] = 0.7 + 0.6 * np.sin(w * t + p + 2.0)
    a[f"spread_{s}"] = 0.3 + 0.2 * np.sin(w * t)
    bend = rng.uniform(0.1, 0.5) * (0.5 - 0.5 * np.cos(2 * w * t))
    a[f"hip_flex_{s}"] = 0.5 * bend
    a[f"knee_{s}"] = bend + 0.05
    a[f"hip_abd_{s}"] = 0.1 + 0.08 * np.sin(w * t + (0 if s == "l" else np.pi))
  a["root_x"] = rng.uniform(0.03, 0.08) * np.sin(w * t)
  a["lean"] = rng.uniform(0.05, 0.2) * np.sin(w * t + 0.5)
  a["yaw"] = rng.uniform(-0.5, 0.5) + rng.uniform(0, 0.6) * np.sin(0.5 * w * t)
  a["head_roll"] = 0.15 * np.sin(w * t + 1.0)
  a["head_pitch"] = 0.1 * np.sin(2 * w * t)
  return a


def still(rng: np.random.Generator, n: int = 1, fps: float = 16.0) -> dict[str, np.ndarray]:
  """A random static pose (reference images): a frame of a random motion at a random time."""
  name = MOTIONS[int(rng.integers(len(MOTIONS)))]
  long = GENERATORS[name](rng, 64, fps)
  i = int(rng.integers(64))
  return {k: np.full(n, v[i]) for k, v in long.items()}


GENERATORS = {"walk": walk, "wave": wave, "turn": turn, "dance": dance}


def make_motion(name: str, rng: np.random.Generator, n: int, fps: float) -> dict[str, np.ndarray]:
  """Joint angles of `n` frames of motion `name` (one of `MOTIONS`)."""
  if name not in GENERATORS:
    raise ValueError(f"unknown motion {name!r}; choose one of {MOTIONS}")
  if n < 1 or fps <= 0:
    raise ValueError(f"motion {name!r}: need n >= 1 frames and fps > 0, got n={n}, fps={fps}")
  return GENERATORS[name](rng, n, fps)
