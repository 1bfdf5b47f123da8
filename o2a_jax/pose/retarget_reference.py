"""Retargeting driving poses to the reference's proportions (official retargeting to the reference,
`align_to_reference`).

This is Wan-Animate's retargeting as the official inference runs it on estimator output ("src" =
the driving video, "dst" = the reference):

1. A global scale between the two people (ankles-to-nose heights, else hips-to-nose, else image
   areas).
2. Per-limb length ratios dst/src over 19 limbs, symmetrised (max of left/right, mean for the head).
3. Every driving frame is rebuilt limb by limb (direction kept, length times the ratio) and moved so
   that the anchor frame's feet (full body) or neck (otherwise) land where the reference's are.
4. Hands are scaled about their root and moved with their wrist (and swapped if the first hand's
   root is closer to the other wrist); hand points below 0.4 are dropped (coordinates 0, score 0).
5. Face landmarks of each driving frame are rescaled to the reference's face proportions and placed
   on the new nose (`o2a_jax.pose.faces`).

The estimator path always has all 20 body points, so the official repair of missing points is a
no-op and is not reproduced. The arithmetic mirrors the official float64 steps, including the
float32 round trip of the output conversion (`aaposemeta_obj_to_dwpose`) and the integer truncation
of hand pixel coordinates, so results agree to ~1e-12. Quirks kept on purpose (they shape what the
released model saw): only the first frame of the sequence (not the anchor) gets the horizontal
correction, and hands come out in the order the official code writes them.
"""

from __future__ import annotations

import math

import numpy as np

from o2a_jax.pose.coco import check_kp133, dwpose_from_meta, metas_from_kp133
from o2a_jax.pose.faces import scale_face_to_reference

# Wan-Animate's 19 limbs (1-based OpenPose pairs incl. toes 19 = left toe, 20 = right toe).
LIMBS = (
  (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
  (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (14, 19), (11, 20),
)  # fmt: skip
_SYMMETRIC_MAX = ((0, 1), (2, 4), (3, 5), (6, 9), (7, 10), (8, 11), (17, 18))
_SYMMETRIC_MEAN = ((13, 15), (14, 16))
_FULL, _THREE_QUARTER, _HALF = 2, 1, 0
_BODY_THRESHOLD = 0.4
_HAND_THRESHOLD = 0.4
_FOOT_TO_CALF = 0.5


def _global_scale(src: dict, dst: dict) -> float:
  """Driving/reference size ratio (`scale_min`)."""
  sb, db = src["body"], dst["body"]

  def confident(body, joints):
    return all(body[j][2] > 0.5 for j in joints)

  for low in ((10, 13), (8, 11)):  # ankles, else hips, measured to the nose
    joints = (0, *low)
    if confident(sb, joints) and confident(db, joints):
      src_h = src["height"] * abs((sb[low[0]][1] + sb[low[1]][1]) / 2 - sb[0][1])
      dst_h = dst["height"] * abs((db[low[0]][1] + db[low[1]][1]) / 2 - db[0][1])
      if dst_h == 0:
        raise ValueError(
          "retarget_to_reference: the reference's nose and "
          f"{'ankles' if low == (10, 13) else 'hips'} are at the same height; cannot size it"
        )
      return 1.0 * src_h / dst_h
  return math.sqrt(src["height"] * src["width"]) / math.sqrt(dst["height"] * dst["width"])


def _body_flag(body) -> int:
  """Official `check_full_body` on normalised (x, y, score) points."""

  def ok(j):
    return body[j][1] <= 1 and body[j][2] >= _BODY_THRESHOLD

  if ok(10) and ok(13) and ok(8) and ok(11):
    return _FULL
  if ok(8) and ok(11):
    return _THREE_QUARTER
  return _HALF


def _limb_length(body, limb, width, height) -> float:
  a, b = body[limb[0] - 1], body[limb[1] - 1]
  xs = np.array([a[0], b[0]]) * float(width)
  ys = np.array([a[1], b[1]]) * float(height)
  return ((xs[0] - xs[1]) ** 2 + (ys[0] - ys[1]) ** 2) ** 0.5


def _bone_ratios(src: dict, dst_body, dst_w: int, dst_h: int) -> list[float]:
  ratios = []
  for k, limb in enumerate(LIMBS):
    src_len = _limb_length(src["body"], limb, src["width"], src["height"])
    if src_len == 0:
      a, b = (j - 1 for j in limb)
      raise ValueError(
        f"retarget_to_reference: limb {k} (joints {a}-{b}) of the driving anchor frame has zero "
        "length; pick another anchor frame"
      )
    ratios.append(1.0 * _limb_length(dst_body, limb, dst_w, dst_h) / src_len)
  for i, j in _SYMMETRIC_MAX:
    ratios[i] = ratios[j] = max(ratios[i], ratios[j])
  for i, j in _SYMMETRIC_MEAN:
    ratios[i] = ratios[j] = (ratios[i] + ratios[j]) / 2
  return ratios


def _limb_geometry(points, ratios):
  """New length and direction (degrees) of every limb, from the points before any update."""
  lengths, angles = [], []
  for k, (a, b) in enumerate(LIMBS):
    p, q = points[a - 1], points[b - 1]
    dy, dx = p[1] - q[1], p[0] - q[0]
    lengths.append(((dy**2) + (dx**2)) ** 0.5 * ratios[k])
    angles.append(math.degrees(math.atan2(dy, dx)))
  return lengths, angles


def _rebuild(points, lengths, angles):
  """Walks the limbs in order, placing each child from its (already moved) parent."""
  out = [list(p) for p in points]
  for k, (a, b) in enumerate(LIMBS):
    start = out[a - 1]
    rad = math.radians(angles[k])
    out[b - 1] = [start[0] - lengths[k] * math.cos(rad), start[1] - lengths[k] * math.sin(rad)]
    out[b - 1] += points[b - 1][2:]
  return out


def _scale_hand(hand, ratio: float):
  """Scales a normalised (21,3) hand about its root; points below the threshold become None."""
  root_dx = hand[0][0] * (ratio - 1)
  root_dy = hand[0][1] * (ratio - 1)
  out = []
  for x, y, s in hand:
    if s < _HAND_THRESHOLD:
      out.append((-1, -1, 0))
    else:
      out.append((x * ratio - root_dx, y * ratio - root_dy, s))
  return out


def _place_hand(hand, delta, src_w: int, src_h: int):
  """Hand points in pixels of the frame, moved by `delta` and truncated to int (as officially)."""
  return [
    None if s == 0 else (int(x * src_w + delta[0]), int(y * src_h + delta[1]), s)
    for x, y, s in hand
  ]


def _retarget_frame(meta, index, ratios, delta_x, delta_y, ground_x, flag, scale, out_w, out_h):
  """Official `get_scaled_pose` for one driving frame; returns body (20,3) and the two hands."""
  src_w, src_h = meta["width"], meta["height"]
  points = [[x * src_w, y * src_h, s] for x, y, s in meta["body"].tolist()]
  lengths, angles = _limb_geometry(points, ratios)
  # Feet are kept within half the calf length (limbs 17/18 vs 11/8).
  if lengths[18] > lengths[8] * _FOOT_TO_CALF:
    lengths[18] = lengths[8] * _FOOT_TO_CALF
  if lengths[17] > lengths[11] * _FOOT_TO_CALF:
    lengths[17] = lengths[11] * _FOOT_TO_CALF
  body = _rebuild(points, lengths, angles)

  # Only the first frame of the sequence gets the horizontal correction (official quirk).
  if index == 0:
    if flag == _FULL:
      delta_x += (body[8][0] + body[11][0]) / 2 - ground_x
    elif flag == _HALF:
      delta_x += body[1][0] - ground_x
  for p in body:
    p[0] = (p[0] - delta_x) / scale
    p[1] = (p[1] - delta_y) / scale

  # Hands: the hand ratio is the shoulder ratio undone by the global scale.
  hand_ratio = max(ratios[0], ratios[1]) / scale
  # The official code turns hands into pixels and back (x * W / W), which can move the last bit.
  pixels = np.array([[src_w, src_h, 1.0]])
  left_hand = [(x / src_w, y / src_h, s) for x, y, s in (meta["left_hand"] * pixels).tolist()]
  right_hand = [(x / src_w, y / src_h, s) for x, y, s in (meta["right_hand"] * pixels).tolist()]
  first = _scale_hand(right_hand, hand_ratio)  # follows the right wrist (4)
  second = _scale_hand(left_hand, hand_ratio)  # follows the left wrist (7)
  first_delta = np.array(body[4][:2]) - np.array(points[4][:2])
  second_delta = np.array(body[7][:2]) - np.array(points[7][:2])
  if first[0][0] != -1:
    first_delta += np.array(
      (points[4][0] - first[0][0] * src_w, points[4][1] - first[0][1] * src_h)
    )
  if second[0][0] != -1:
    second_delta += np.array(
      (points[7][0] - second[0][0] * src_w, points[7][1] - second[0][1] * src_h)
    )
  # Both distances are measured from the first hand's root (official behaviour).
  root = (first[0][0] * src_w, first[0][1] * src_h)
  dist_own = ((points[4][0] - root[0]) ** 2 + (points[4][1] - root[1]) ** 2) ** 0.5
  dist_other = ((points[7][0] - root[0]) ** 2 + (points[7][1] - root[1]) ** 2) ** 0.5
  if dist_own > dist_other:
    out_right = _place_hand(first, second_delta, src_w, src_h)
    out_left = _place_hand(second, first_delta, src_w, src_h)
  else:
    out_left = _place_hand(first, first_delta, src_w, src_h)
    out_right = _place_hand(second, second_delta, src_w, src_h)
  norm_body = [[p[0] / out_w, p[1] / out_h, p[2]] for p in body]
  return norm_body, out_left, out_right


def _to_dwpose(norm_body, left, right, width: int, height: int) -> dict:
  """Official `get_retarget_pose` output + `aaposemeta_obj_to_dwpose` (float32 pixels)."""
  body = np.array(norm_body, dtype=np.float64)
  size = np.array([width, height])
  candidate = np.nan_to_num(np.array(body[:, :2] * (width, height), dtype=np.float32)) / size
  score = np.array(body[:, 2], dtype=np.float32)
  subset = np.arange(len(candidate), dtype=float)
  subset[score <= 0] = -1

  def hand_arrays(hand):
    xy = np.array([(0.0, 0.0) if p is None else (p[0], p[1]) for p in hand], dtype=np.float32)
    sc = np.array([0.0 if p is None else p[2] for p in hand], dtype=np.float32)
    return xy / size, sc

  # The official dict lists its "right" hand first.
  r_xy, r_sc = hand_arrays(right)
  l_xy, l_sc = hand_arrays(left)
  return {
    "bodies": {"candidate": candidate, "subset": subset[None], "score": score[None]},
    "hands": np.stack([r_xy, l_xy]),
    "hands_score": np.stack([r_sc, l_sc]),
    "faces": None,
    "faces_score": None,
  }


def retarget_metas(ref: dict, metas: list[dict], anchor: int) -> list[dict]:
  """Official `get_retarget_pose(metas[anchor], ref, metas)` + conversion; bodies only, no faces."""
  src = metas[anchor]
  scale = _global_scale(src, ref)
  dst_w = int(ref["width"] * scale)
  dst_h = int(ref["height"] * scale)
  if dst_w <= 0 or dst_h <= 0:
    raise ValueError(
      f"retarget_to_reference: the driving/reference size ratio {scale:.3g} is degenerate"
    )
  flag = min(_body_flag(ref["body"]), _body_flag(src["body"]))
  ratios = _bone_ratios(src, ref["body"], dst_w, dst_h)

  src_points = [[x * src["width"], y * src["height"]] for x, y, _ in src["body"].tolist()]
  lengths, angles = _limb_geometry(src_points, ratios)
  rescaled = _rebuild(src_points, lengths, angles)
  dst = ref["body"].tolist()
  if flag == _FULL:
    # The ground line: the lower of the two ankle/toe midpoints (toes always exist on this path).
    right_foot = (dst[10][1] + dst[19][1]) / 2
    left_foot = (dst[13][1] + dst[18][1]) / 2
    dst_ground_y = max(left_foot, right_foot) * dst_h
    delta_y = max(rescaled[10][1], rescaled[13][1]) - dst_ground_y
    ground_x = (rescaled[8][0] + rescaled[11][0]) / 2
    delta_x = ground_x - (dst[8][0] + dst[11][0]) * dst_w / 2
  else:
    delta_y = rescaled[1][1] - dst[1][1] * dst_h
    ground_x = rescaled[1][0]
    delta_x = ground_x - dst[1][0] * dst_w

  out_w, out_h = ref["width"], ref["height"]
  poses = []
  for i, meta in enumerate(metas):
    body, left, right = _retarget_frame(
      meta, i, ratios, delta_x, delta_y, ground_x, flag, scale, out_w, out_h
    )
    poses.append(_to_dwpose(body, left, right, out_w, out_h))
  return poses


def retarget_to_reference(ref_kp133, driving_kp133, width: int, height: int, *, anchor=0):
  """Official `align_to_reference` on raw estimator keypoints (official retargeting to the
  reference).

  Args:
    ref_kp133: (133,3) COCO-WholeBody keypoints of the reference image (pixels, score).
    driving_kp133: (N,133,3) keypoints of the driving frames, estimated at the reference's size.
    width, height: the image size both were estimated at.
    anchor: index of the driving frame whose proportions are measured, or None to pick it with
      `pick_anchor_frame` (the official scripts always use 0).

  Returns:
    N DWPose-style dicts: 20 body points (toes included), hands [right, left] as officially written,
    faces from the driving frames rescaled to the reference's face proportions at the new nose.
  """
  from o2a_jax.pose.anchor import pick_anchor_frame

  ref_kp = check_kp133(ref_kp133, "ref_kp133")
  drv_kp = check_kp133(driving_kp133, "driving_kp133", frames=True)
  ref_meta = metas_from_kp133(ref_kp[None], width, height, "ref_kp133")[0]
  metas = metas_from_kp133(drv_kp, width, height, "driving_kp133")
  ref_pose = dwpose_from_meta(ref_meta)
  driving = [dwpose_from_meta(m) for m in metas]
  if anchor is None:
    anchor = pick_anchor_frame(ref_pose, driving)
  if not (isinstance(anchor, int | np.integer) and 0 <= anchor < len(metas)):
    raise ValueError(f"anchor must be a frame index in [0, {len(metas)}) or None, got {anchor!r}")
  poses = retarget_metas(ref_meta, metas, int(anchor))
  ref_face = ref_pose["faces"][0]
  for pose, drv in zip(poses, driving):
    nose = pose["bodies"]["candidate"][0]
    pose["faces"] = scale_face_to_reference(drv["faces"][0], ref_face, nose)[None]
    pose["faces_score"] = drv["faces_score"]
  return poses
