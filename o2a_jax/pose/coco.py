"""COCO-WholeBody estimator keypoints -> pose metas and DWPose-style dicts (official pose estimator
and keypoint format).

The official inference estimates poses with ViTPose-H whole-body (133 COCO-WholeBody keypoints,
pixels plus scores) and converts them in two steps, reproduced here:

1. `load_pose_metas_from_kp2ds_seq`: normalise by the image size and regroup into a "meta" (20
   OpenPose body points, each the mean of two COCO points so that the neck is the mid-shoulder
   point with the mean score, 21 + 21 hand points, 69 face points). A frame whose body points all
   lie off-image (every point has a negative coordinate) reuses the previous frame's body, as
   officially.
2. `aaposemeta_to_dwpose`: the first 18 body points, subset -1 only where the score is <= 0, hands
   in **[right, left]** order (unlike DWPose's [left, right]; rendering does not care), the 68 face
   landmarks.
"""

from __future__ import annotations

import numpy as np

from o2a_jax.pose.schema import require_usable

# COCO-WholeBody indices averaged into the 20 OpenPose-order body points (a == b copies a point).
_BODY_A = [0, 6, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 17, 20]
_BODY_B = [0, 5, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3, 18, 21]
_LEFT_HAND = slice(91, 112)
_RIGHT_HAND = slice(112, 133)
_FACE = slice(22, 91)  # right heel followed by the 68 face landmarks


def check_kp133(kp, name: str, *, frames: bool = False) -> np.ndarray:
  """Checks (133,3) (or (N,133,3) with frames=True) keypoints and returns them as float64."""
  try:
    arr = np.array(kp, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name}: expected numeric COCO-WholeBody keypoints ({e})") from e
  expected = "(N,133,3)" if frames else "(133,3)"
  if arr.shape[-2:] != (133, 3) or arr.ndim != (3 if frames else 2):
    raise ValueError(
      f"{name}: expected COCO-WholeBody keypoints of shape {expected} (x, y in pixels, score), "
      f"got {arr.shape}"
    )
  if frames and arr.shape[0] == 0:
    raise ValueError(f"{name}: no frames (shape {arr.shape})")
  if not np.all(np.isfinite(arr)):
    raise ValueError(f"{name}: keypoints contain NaN or infinite values")
  return arr


def _check_size(width, height) -> tuple[int, int]:
  if int(width) != width or int(height) != height or width <= 0 or height <= 0:
    raise ValueError(f"image size must be positive integers, got width={width}, height={height}")
  return int(width), int(height)


def metas_from_kp133(kp_frames: np.ndarray, width: int, height: int, name: str) -> list[dict]:
  """Official `load_pose_metas_from_kp2ds_seq`: (N,133,3) pixel keypoints -> per-frame metas.

  A meta holds normalised (x, y, score) arrays: `body` (20,3), `left_hand` (21,3), `right_hand`
  (21,3), `face` (69,3), and the image `width`, `height`.
  """
  width, height = _check_size(width, height)
  metas = []
  last_body = None
  for i, kps in enumerate(kp_frames):
    kps = kps.copy()
    kps[:, 0] /= width
    kps[:, 1] /= height
    body = (kps[_BODY_A] + kps[_BODY_B]) / 2
    # Estimators return off-image garbage when nobody is visible; the official code then keeps the
    # previous frame's body (and would crash on a first frame like this: here a clear error).
    if body[:, :2].min(axis=1).max() < 0:
      if last_body is None:
        raise ValueError(
          f"{name}: frame {i} has no usable body joints (every body point lies off-image) and "
          "there is no earlier frame to take them from"
        )
      body = last_body
    last_body = body
    metas.append(
      {
        "width": width,
        "height": height,
        "body": body.copy(),
        "left_hand": kps[_LEFT_HAND].copy(),
        "right_hand": kps[_RIGHT_HAND].copy(),
        "face": kps[_FACE].copy(),
      }
    )
  return metas


def dwpose_from_meta(meta: dict) -> dict:
  """Official `aaposemeta_to_dwpose`: a meta -> DWPose-style dict (18 body points, hands [R, L])."""
  body = meta["body"][:18]
  score = body[:, 2].copy()
  subset = np.arange(len(body), dtype=float)
  subset[score <= 0] = -1
  return {
    "bodies": {"candidate": body[:, :2].copy(), "subset": subset[None], "score": score[None]},
    "hands": np.stack([meta["right_hand"][:, :2], meta["left_hand"][:, :2]]),
    "hands_score": np.stack([meta["right_hand"][:, 2], meta["left_hand"][:, 2]]),
    "faces": meta["face"][1:, :2][None].copy(),
    "faces_score": meta["face"][1:, 2][None].copy(),
  }


def from_coco_wholebody(kp133, width: int, height: int) -> dict:
  """(133,3) COCO-WholeBody keypoints (x, y in pixels, score) -> DWPose-style pose dict.

  The official estimator-path conversion (official pose estimator and keypoint format): hands come
  out in [right, left] order. Raises ValueError for a wrong shape, non-finite values, or a frame
  with no usable body joint.
  """
  kp = check_kp133(kp133, "kp133")
  meta = metas_from_kp133(kp[None], width, height, "kp133")[0]
  pose = dwpose_from_meta(meta)
  require_usable(pose, "kp133")
  return pose
