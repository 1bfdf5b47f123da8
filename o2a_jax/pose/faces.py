"""Rough face alignment (official `_face_scale_only`, IF:132-164; official retargeting to the
reference step 9).

The 68 driving landmarks are centred on the mean of five anchors (the two eye centres, the nose tip,
the two mouth corners), scaled in x by the reference's outer-eye-corner distance (36-45) over the
driving one and in y by the nose-bridge-to-chin distance (27-8), then moved so that the nose tip
(30) lands on the given nose position.
"""

from __future__ import annotations

import numpy as np

_EYE_A = list(range(36, 42))
_EYE_B = list(range(42, 48))
_NOSE_TIP = 30
_MOUTH_CORNERS = (48, 54)
_WIDTH_PAIR = (36, 45)
_HEIGHT_PAIR = (27, 8)
_MIN_LENGTH = 1e-6


def _anchor_centre(face: np.ndarray) -> np.ndarray:
  # The official code orders the two eye centres left-to-right first; the mean does not depend on it
  # beyond rounding, so the order is kept to reproduce the sum exactly.
  a = face[_EYE_A].mean(axis=0)
  b = face[_EYE_B].mean(axis=0)
  if b[0] < a[0]:
    a, b = b, a
  anchors = np.stack([a, b, face[_NOSE_TIP], face[_MOUTH_CORNERS[0]], face[_MOUTH_CORNERS[1]]])
  return anchors.mean(axis=0)


def scale_face_to_reference(face, ref_face, nose) -> np.ndarray:
  """(68,2) driving landmarks -> (68,2) float64: reference proportions, nose tip at `nose`.

  A vanishing driving distance leaves that axis unscaled, as officially.
  """
  src = np.asarray(face, dtype=np.float64)
  ref = np.asarray(ref_face, dtype=np.float64)
  if src.shape != (68, 2) or ref.shape != (68, 2):
    raise ValueError(f"face landmarks must be (68,2), got {src.shape} and {ref.shape}")
  centre = _anchor_centre(src)
  local = src - centre
  src_w = np.linalg.norm(src[_WIDTH_PAIR[0]] - src[_WIDTH_PAIR[1]])
  ref_w = np.linalg.norm(ref[_WIDTH_PAIR[0]] - ref[_WIDTH_PAIR[1]])
  src_h = np.linalg.norm(src[_HEIGHT_PAIR[0]] - src[_HEIGHT_PAIR[1]])
  ref_h = np.linalg.norm(ref[_HEIGHT_PAIR[0]] - ref[_HEIGHT_PAIR[1]])
  scale_x = ref_w / src_w if src_w > _MIN_LENGTH else 1.0
  scale_y = ref_h / src_h if src_h > _MIN_LENGTH else 1.0
  local[:, 0] *= scale_x  # the official blend (1 - alpha) + scale * alpha, with alpha = 1
  local[:, 1] *= scale_y
  out = local + centre
  out += np.asarray(nose) - out[_NOSE_TIP]
  return out
