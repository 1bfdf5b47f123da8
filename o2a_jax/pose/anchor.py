"""Anchor-frame selection (official `pick_good_source_frame`, IF:186-271).

The official scripts always use frame 0 as the anchor (official bug: anchor frame always 0); this is
the rule they would use otherwise. Frames are ranked by (1) how many of four left/right limb pairs
(upper arms, forearms, thighs, shins) have reference/driving length ratios within a factor 1.5 of
each other, (2) whether the body is upright (torso within 30 degrees of vertical, shoulders and hips
within 30 degrees of horizontal, none of those joints at a non-positive coordinate), (3) the
smallest difference to the reference in shoulder tilt plus head tilt. Ties keep the earliest frame.
"""

from __future__ import annotations

import math

import numpy as np

from o2a_jax.pose.schema import as_pose, as_poses

_MIN_LENGTH = 1e-6
_PAIR_RATIO = 1.5
_TORSO_DEG = 30
_LEVEL_DEG = 30
# Limb pairs compared for symmetry: (joint pair, mirrored joint pair).
_SYMMETRIC_LIMBS = (((2, 3), (5, 6)), ((3, 4), (6, 7)), ((8, 9), (11, 12)), ((9, 10), (12, 13)))


def _from_vertical(v) -> float:
  return math.atan2(abs(v[0]), abs(v[1]) + 1e-9)


def _from_horizontal(v) -> float:
  return math.atan2(abs(v[1]), abs(v[0]) + 1e-9)


def _upright(cand: np.ndarray) -> bool:
  neck, r_sh, l_sh, r_hip, l_hip = cand[1], cand[2], cand[5], cand[8], cand[11]
  if any((p <= 0).any() for p in (neck, r_sh, l_sh, r_hip, l_hip)):
    return False
  torso = (r_hip + l_hip) / 2 - (l_sh + r_sh) / 2
  if _from_vertical(torso) > math.radians(_TORSO_DEG):
    return False
  if _from_horizontal(l_sh - r_sh) > math.radians(_LEVEL_DEG):
    return False
  return _from_horizontal(r_hip - l_hip) <= math.radians(_LEVEL_DEG)


def _ratio(ref: np.ndarray, cand: np.ndarray, i: int, j: int) -> float:
  l_ref = np.linalg.norm(ref[i] - ref[j])
  l_src = np.linalg.norm(cand[i] - cand[j])
  return 1.0 if l_src < _MIN_LENGTH else l_ref / l_src


def _symmetric_pairs(ref: np.ndarray, cand: np.ndarray) -> int:
  count = 0
  for a, b in _SYMMETRIC_LIMBS:
    v1, v2 = _ratio(ref, cand, *a), _ratio(ref, cand, *b)
    if v1 < _MIN_LENGTH or v2 < _MIN_LENGTH:
      continue
    if 1.0 / _PAIR_RATIO <= v1 / v2 <= _PAIR_RATIO:
      count += 1
  return count


def pick_anchor_frame(ref_pose, driving_poses) -> int:
  """Index of the driving frame the official rule would pick as the retargeting anchor."""
  ref = as_pose(ref_pose, "ref_pose")["bodies"]["candidate"]
  frames = as_poses(driving_poses)
  ref_shoulder = _from_horizontal(ref[5] - ref[2])
  ref_head = _from_vertical(ref[0] - ref[1])
  ranked = []
  for idx, pose in enumerate(frames):
    cand = pose["bodies"]["candidate"]
    angle = abs(_from_horizontal(cand[5] - cand[2]) - ref_shoulder) + abs(
      _from_vertical(cand[0] - cand[1]) - ref_head
    )
    ranked.append((-_symmetric_pairs(ref, cand), not _upright(cand), angle, idx))
  return min(ranked)[3]
