"""Validation and normalisation of DWPose-style pose dicts (the official pose format).

A pose dict, as the official code stores and draws it (contract "Pose" section):

- `bodies.candidate` (K,2): joint coordinates normalised by the frame width/height, OpenPose order;
  K = 18 (DWPose, the estimator conversion) or 20 (retargeted poses also carry the two toes).
- `bodies.subset` (P,K'): per person, the candidate row of each joint or -1 if the joint is missing
  (K' >= 18).
- `bodies.score` (P,K'): per person, the confidence of each joint.
- `hands` (M,21,2) and `hands_score` (M,21): usually M = 2 hands; the order is [left, right] for
  DWPose data and [right, left] for poses converted from COCO-WholeBody estimator output (both draw
  identically).
- `faces` (F,68,2) and `faces_score` (F,68), or None: 68 face landmarks.

Arrays may be numpy arrays or nested lists. `as_pose` checks every field and returns a new dict of
numpy arrays (floating arrays keep their dtype, because the official float32/float64 arithmetic is
reproduced as given; anything else becomes float64), so callers never mutate the caller's data.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

# OpenPose joint names, used in error messages.
JOINT_NAMES = (
  "nose",
  "neck",
  "right shoulder",
  "right elbow",
  "right wrist",
  "left shoulder",
  "left elbow",
  "left wrist",
  "right hip",
  "right knee",
  "right ankle",
  "left hip",
  "left knee",
  "left ankle",
  "right eye",
  "left eye",
  "right ear",
  "left ear",
  "left toe",
  "right toe",
)


def joint_label(index: int) -> str:
  """'right shoulder (2)' style label for error messages."""
  return f"{JOINT_NAMES[index]} ({index})"


def _float_array(value: Any, field: str, name: str) -> np.ndarray:
  try:
    arr = np.array(value)
  except Exception as e:  # ragged nested lists and the like
    raise ValueError(f"{name}: field '{field}' is not a rectangular numeric array ({e})") from e
  if arr.dtype == object or not (
    np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
  ):
    raise ValueError(
      f"{name}: field '{field}' must be numeric (nested lists or a numpy array), "
      f"got dtype {arr.dtype}"
    )
  if not np.issubdtype(arr.dtype, np.floating):
    arr = arr.astype(np.float64)
  if not np.all(np.isfinite(arr)):
    raise ValueError(
      f"{name}: field '{field}' contains NaN or infinite values; mark missing joints with score 0 "
      "(and subset -1) instead"
    )
  return arr


def _shape_error(name: str, field: str, arr: np.ndarray, expected: str) -> ValueError:
  return ValueError(f"{name}: field '{field}' has shape {arr.shape}; expected {expected}")


def as_pose(pose: Any, name: str = "pose") -> dict:
  """Checks a DWPose-style dict and returns a normalised copy (numpy arrays, faces possibly None).

  Raises ValueError naming the bad field and its shape.
  """
  if not isinstance(pose, Mapping):
    raise ValueError(f"{name}: expected a pose dict, got {type(pose).__name__}")
  for key in ("bodies", "hands", "hands_score"):
    if key not in pose:
      raise ValueError(
        f"{name}: missing field '{key}' (a DWPose-style dict needs bodies, hands, faces)"
      )
  bodies = pose["bodies"]
  if not isinstance(bodies, Mapping):
    raise ValueError(f"{name}: field 'bodies' must be a dict, got {type(bodies).__name__}")
  for key in ("candidate", "subset", "score"):
    if key not in bodies:
      raise ValueError(f"{name}: missing field 'bodies.{key}'")

  candidate = _float_array(bodies["candidate"], "bodies.candidate", name)
  if candidate.ndim != 2 or candidate.shape[1] != 2 or candidate.shape[0] < 18:
    raise _shape_error(name, "bodies.candidate", candidate, "(K,2) with K >= 18 (normalised x,y)")
  subset = _float_array(bodies["subset"], "bodies.subset", name)
  if subset.ndim == 1:
    subset = subset[None]
  if subset.ndim != 2 or subset.shape[1] < 18:
    raise _shape_error(name, "bodies.subset", subset, "(P,K) with K >= 18 (candidate row or -1)")
  score = _float_array(bodies["score"], "bodies.score", name)
  if score.ndim == 1:
    score = score[None]
  if score.shape != subset.shape:
    raise _shape_error(name, "bodies.score", score, f"{subset.shape} (the shape of bodies.subset)")
  valid = subset >= 0
  if np.any(subset[valid] != np.round(subset[valid])) or np.any(subset[valid] >= len(candidate)):
    raise ValueError(
      f"{name}: field 'bodies.subset' must hold candidate row indices "
      f"in [0, {len(candidate)}) or -1"
    )
  if np.any(subset[~valid] != -1):
    raise ValueError(f"{name}: field 'bodies.subset' has negative entries other than -1")

  hands = _float_array(pose["hands"], "hands", name)
  if hands.size == 0:
    hands = hands.reshape(0, 21, 2)
  if hands.ndim != 3 or hands.shape[1:] != (21, 2):
    raise _shape_error(name, "hands", hands, "(M,21,2), usually (2,21,2)")
  hands_score = _float_array(pose["hands_score"], "hands_score", name)
  if hands_score.size == 0:
    hands_score = hands_score.reshape(0, 21)
  if hands_score.shape != hands.shape[:2]:
    raise _shape_error(name, "hands_score", hands_score, f"{hands.shape[:2]} (matching hands)")

  faces = pose.get("faces")
  faces_score = pose.get("faces_score")
  if faces is None:
    faces_score = None
  else:
    faces = _float_array(faces, "faces", name)
    if faces.ndim == 2:
      faces = faces[None]
    if faces.ndim != 3 or faces.shape[1:] != (68, 2):
      raise _shape_error(name, "faces", faces, "(F,68,2), usually (1,68,2), or None")
    if faces_score is None:
      raise ValueError(f"{name}: field 'faces' is given but 'faces_score' is missing")
    faces_score = _float_array(faces_score, "faces_score", name)
    if faces_score.ndim == 1:
      faces_score = faces_score[None]
    if faces_score.shape != faces.shape[:2]:
      raise _shape_error(name, "faces_score", faces_score, f"{faces.shape[:2]} (matching faces)")

  return {
    "bodies": {"candidate": candidate, "subset": subset, "score": score},
    "hands": hands,
    "hands_score": hands_score,
    "faces": faces,
    "faces_score": faces_score,
  }


def as_poses(poses: Any, name: str = "driving_poses") -> list[dict]:
  """Checks a non-empty sequence of pose dicts."""
  if isinstance(poses, Mapping) or not hasattr(poses, "__len__"):
    raise ValueError(f"{name}: expected a list of pose dicts, got {type(poses).__name__}")
  if len(poses) == 0:
    raise ValueError(f"{name}: the list of poses is empty")
  return [as_pose(p, f"{name}[{i}]") for i, p in enumerate(poses)]


def present_joints(pose: dict) -> np.ndarray:
  """(K',) bool: joints of the first person that are detected (subset index >= 0 and score > 0)."""
  subset = pose["bodies"]["subset"][0]
  score = pose["bodies"]["score"][0]
  return (subset >= 0) & (score > 0)


def require_usable(pose: dict, name: str) -> None:
  """Raises if the pose has no detected body joint at all (nothing to scale, align or retarget)."""
  if not np.any(present_joints(pose)):
    raise ValueError(
      f"{name}: the pose has no usable body joints (every bodies.subset entry is -1 or every "
      "score <= 0); was a person detected in this frame?"
    )
