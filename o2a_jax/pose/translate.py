"""Pose-guided translation of the reference image (official pose-guided reference translation, the
official `warp_ref_to_pose`).

The reference image is scaled about its neck and moved so that its neck lands on the driving pose's
neck, with the scale taken from the ratio of body sizes (`body_scale_ratio`). The arithmetic follows
the golden fixtures bit for bit: the scale ratio is computed from float32 keypoints in float32 (as
`scale_and_translate_pose` does), the score thresholds compare the float32 scores with the float64
threshold (NumPy 1.x promotion, which the official code ran under), and the neck positions and the
translation are float64 from the keypoints as given (the fixtures' affines match this and not a
float32 neck); the matrix is then stored as float32, as officially.
"""

from __future__ import annotations

import cv2
import numpy as np

from o2a_jax.pose.render import render
from o2a_jax.pose.schema import as_pose, joint_label, present_joints, require_usable

_CONF = 0.9
_MIN_LENGTH = 1e-6
_NECK = 1
_SHOULDERS = (2, 5)
_HIPS = (8, 11)
_EARS = (16, 17)


def _scores32(pose: dict) -> np.ndarray:
  return np.asarray(pose["bodies"]["score"], dtype=np.float32).reshape(-1)


def _confident(scores: np.ndarray, joints, conf: float) -> bool:
  # float32 scores against a float64 threshold (NumPy 1.x promotion, see the module docstring).
  return bool(all(float(scores[j]) >= conf for j in joints))


def body_scale_ratio(pose: dict, target: dict, *, conf: float = _CONF) -> np.float32:
  """Size of `target` relative to `pose`.

  The official `scale_and_translate_pose(pose, target, return_ratio=True)`.

  Both shoulders and both hips confident (score >= conf) in both poses: the mean of the
  shoulder-width ratio and the torso-height ratio; else both shoulders: the shoulder-distance ratio;
  else the ear-distance ratio. Float32, as officially. Where the official code would divide by a
  vanishing length (it silently returns 1.0) or fall back to ears that are not detected, this raises
  a ValueError that names the missing joints.
  """
  pose = as_pose(pose, "pose")
  target = as_pose(target, "target")
  p_kpt = np.asarray(pose["bodies"]["candidate"], dtype=np.float32)
  t_kpt = np.asarray(target["bodies"]["candidate"], dtype=np.float32)
  p_sc, t_sc = _scores32(pose), _scores32(target)
  shoulder_ok = _confident(p_sc, _SHOULDERS, conf) and _confident(t_sc, _SHOULDERS, conf)
  hip_ok = _confident(p_sc, _HIPS, conf) and _confident(t_sc, _HIPS, conf)

  if shoulder_ok and hip_ok:
    p_w = abs(p_kpt[5, 0] - p_kpt[2, 0])
    t_w = abs(t_kpt[5, 0] - t_kpt[2, 0])
    p_h = abs(np.mean(p_kpt[[8, 11], 1]) - np.mean(p_kpt[[2, 5], 1]))
    t_h = abs(np.mean(t_kpt[[8, 11], 1]) - np.mean(t_kpt[[2, 5], 1]))
    _check_length(p_w, "shoulder width", "reference")
    _check_length(p_h, "torso height", "reference")
    return np.float32((t_w / p_w + t_h / p_h) / np.float32(2))

  if shoulder_ok:
    p_d = np.linalg.norm(p_kpt[2] - p_kpt[5])
    t_d = np.linalg.norm(t_kpt[2] - t_kpt[5])
    _check_length(p_d, "shoulder distance", "reference")
    return np.float32(t_d / p_d)

  # The official rule uses the ears without checking them; undetected ears would give a meaningless
  # scale.
  missing = []
  for label, pz, sc in (("reference", pose, p_sc), ("driving", target, t_sc)):
    present = present_joints(pz)
    low = [joint_label(j) for j in (*_SHOULDERS, *_HIPS) if float(sc[j]) < conf]
    ears = [joint_label(j) for j in _EARS if not present[j]]
    missing.append((label, low, ears))
  if any(ears for _, _, ears in missing):
    details = "; ".join(
      f"{label} pose: shoulders/hips below {conf}: {', '.join(low) or 'none'}, "
      f"ears not detected: {', '.join(ears) or 'none'}"
      for label, low, ears in missing
    )
    raise ValueError(
      "cannot compute the reference-to-driving body scale: it needs both shoulders (and hips) "
      f"with score >= {conf} in both poses, or else both ears detected in both poses ({details})"
    )
  p_d = np.linalg.norm(p_kpt[16] - p_kpt[17])
  t_d = np.linalg.norm(t_kpt[16] - t_kpt[17])
  _check_length(p_d, "ear distance", "reference")
  return np.float32(t_d / p_d)


def _check_length(length, what: str, label: str) -> None:
  if not length > _MIN_LENGTH:
    raise ValueError(
      f"cannot compute the body scale: the {label} pose's {what} is zero (coincident joints); "
      "check the keypoints"
    )


def translate_reference(image, ref_pose, driving_pose, *, drawing: str = "official"):
  """Moves the reference onto the driving anchor pose (official `warp_ref_to_pose`, official
  pose-guided reference translation).

  Args:
    image: uint8 (H,W,3) reference image (RGB).
    ref_pose: the reference image's pose dict.
    driving_pose: the driving pose of the anchor frame (normalised to the same H,W).
    drawing: how the reference pose is drawn (`render`'s DRAWINGS; the model's training drawing).

  Returns:
    (image, pose_image, mask, affine): the warped reference uint8 (H,W,3); the reference pose drawn
    without face and warped the same way, uint8 (H,W,3); uint8 (H,W) mask, 255 where the warped
    reference does not cover the frame (the region the model must outpaint), 0 elsewhere; the
    float32 (2,3) affine matrix (scale about the reference neck, then move it onto the driving
    neck).
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(
      f"translate_reference: image must be uint8 (H,W,3), got {image.dtype} {image.shape}"
    )
  ref = as_pose(ref_pose, "ref_pose")
  drv = as_pose(driving_pose, "driving_pose")
  require_usable(ref, "ref_pose")
  require_usable(drv, "driving_pose")
  for label, p in (("ref_pose", ref), ("driving_pose", drv)):
    if not present_joints(p)[_NECK]:
      raise ValueError(f"{label}: the neck (1) is not detected; it anchors the translation")
  H, W = image.shape[:2]
  pose_image = render(ref, H, W, without_face=True, drawing=drawing)

  scale = body_scale_ratio(ref, drv)
  ref_kpt = np.asarray(ref["bodies"]["candidate"], dtype=np.float64)
  drv_kpt = np.asarray(drv["bodies"]["candidate"], dtype=np.float64)
  # float64 translation, float32 scale (see the module docstring); the matrix is stored as float32.
  s = float(scale)
  x0 = float(ref_kpt[_NECK][0]) * W
  y0 = float(ref_kpt[_NECK][1]) * H
  dx = float(drv_kpt[_NECK][0]) * W - x0
  dy = float(drv_kpt[_NECK][1]) * H - y0
  affine = np.array([[s, 0, (1 - s) * x0 + dx], [0, s, (1 - s) * y0 + dy]], dtype=np.float32)
  warped = cv2.warpAffine(image, affine, (W, H), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
  warped_pose = cv2.warpAffine(
    pose_image, affine, (W, H), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)
  )
  mask = cv2.warpAffine(
    np.zeros((H, W), np.uint8), affine, (W, H), flags=cv2.INTER_NEAREST, borderValue=255
  )
  return warped, warped_pose, mask, affine
