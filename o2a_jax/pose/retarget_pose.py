"""Retargeting driving poses with the reference's limb ratios (official align_to_pose, official
`align_to_pose`).

Used in "pose" mode: the reference pose is first scaled and moved onto the anchor driving pose (the
same body-size rule as the translation, anchored at the neck). Per-limb length ratios reference /
driving are then computed over progressively larger groups of confident joints (score >= 0.9 in
both: head; + shoulders; + upper arms (forearms copy them); + hips; + own forearms; + thighs (shins
copy them); all limbs when all 18 joints are confident), left/right pairs averaged. Every driving
frame is then edited joint chain by joint chain: each child moves by (parent - child) * (1 - ratio),
carrying the rest of its chain (and the hand with the wrist); legs move by (child - parent) * (ratio
- 1); the face is rescaled to the reference's proportions at the new nose.

The bug fixed here (official bug: align_to_pose hand assignment): the official code moves `hands[1]`
with the right arm and `hands[0]` with the left arm. That is right for DWPose dicts ([left, right])
but wrong for the estimator-derived dicts the official inference actually feeds it ([right, left]),
so the hands detach from the wrists. With `reproduce_official=False` (the default) each hand instead
follows the arm whose wrist is nearest its root point (hand point 0), decided per frame before
anything moves: with both hand roots located (score > 0, positive coordinates) the pairing with the
smaller total root-to-wrist distance wins; with one, it takes its nearer wrist and the other hand
the other arm; with none (or a wrist missing), the official order is kept. So both hand orders work.
Other official quirks are kept because they shape what the model saw: the hip step moves only the
hip joints (knees and ankles do not follow).

Arithmetic follows the official NumPy 1.x behaviour: the reference pose and the ratios are float32
(ratios averaged in float64 where a float32 meets a Python float), the frames are edited in float64.
"""

from __future__ import annotations

import numpy as np

from o2a_jax.pose.anchor import pick_anchor_frame
from o2a_jax.pose.faces import scale_face_to_reference
from o2a_jax.pose.schema import as_pose, as_poses, present_joints, require_usable
from o2a_jax.pose.translate import body_scale_ratio

_CONF = 0.9
_MIN_LENGTH = 1e-6
_NECK = 1
_R_WRIST, _L_WRIST = 4, 7

_RATIO_PAIRS = (
  (0, 1), (1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (0, 14), (0, 15), (14, 16), (15, 17),
  (8, 9), (9, 10), (11, 12), (12, 13), (1, 8), (1, 11),
)  # fmt: skip
_HEAD = (0, 1, 14, 15, 16, 17)
_SHOULDERS = (*_HEAD, 2, 5)
_UPPER_ARMS = (*_SHOULDERS, 3, 6)
_HIPS = (*_UPPER_ARMS, 8, 11)
_FOREARMS = (*_HIPS, 4, 7)
_THIGHS = (*_FOREARMS, 9, 12)
_SYMMETRIC = (
  ((1, 2), (1, 5)),
  ((2, 3), (5, 6)),
  ((3, 4), (6, 7)),
  ((8, 9), (11, 12)),
  ((9, 10), (12, 13)),
)


def _scaled_reference(ref: dict, anchor: dict) -> dict:
  """Official `scale_and_translate_pose(ref, anchor)`: the reference scaled about its neck and moved
  onto the anchor's neck (body float32; hands and face in their own dtype)."""
  scale = body_scale_ratio(ref, anchor)
  kpt = np.array(ref["bodies"]["candidate"], dtype=np.float32)
  target = np.asarray(anchor["bodies"]["candidate"], dtype=np.float32)
  pivot = kpt[_NECK].copy()

  def rescale(arr):
    if arr is not None and arr.size > 0:
      s = np.asarray(scale, dtype=arr.dtype) if arr.dtype == np.float32 else float(scale)
      arr[..., 0] = pivot[0] + (arr[..., 0] - pivot[0]) * s
      arr[..., 1] = pivot[1] + (arr[..., 1] - pivot[1]) * s

  faces = None if ref["faces"] is None else ref["faces"].copy()
  hands = ref["hands"].copy()
  for arr in (kpt, faces, hands):
    rescale(arr)
  offset = target[_NECK] - kpt[_NECK]
  for arr in (kpt, faces, hands):
    if arr is not None and arr.size > 0:
      arr += offset
  out = dict(ref)
  out["bodies"] = dict(ref["bodies"], candidate=kpt)
  out["faces"], out["hands"] = faces, hands
  return out


def _ratios(ref_cand, ref_scores, src_cand, src_scores) -> dict:
  """Official `compute_ratios_stepwise` (float32 lengths; 1.0 where nothing is known)."""

  def valid(joints):
    return all(float(ref_scores[j]) >= _CONF and float(src_scores[j]) >= _CONF for j in joints)

  def ratio(a, b):
    len_ref = np.linalg.norm(ref_cand[a] - ref_cand[b])
    len_src = np.linalg.norm(src_cand[a] - src_cand[b])
    return len_ref / len_src if len_src > _MIN_LENGTH else 1.0

  r = {p: 1.0 for p in _RATIO_PAIRS}
  if valid(_HEAD):
    for p in ((0, 1), (0, 14), (0, 15), (14, 16), (15, 17)):
      r[p] = ratio(*p)
  if valid(_SHOULDERS):
    r[(1, 2)], r[(1, 5)] = ratio(1, 2), ratio(1, 5)
  if valid(_UPPER_ARMS):
    r[(2, 3)], r[(5, 6)] = ratio(2, 3), ratio(5, 6)
    r[(3, 4)], r[(6, 7)] = r[(2, 3)], r[(5, 6)]
  if valid(_HIPS):
    r[(1, 8)], r[(1, 11)] = ratio(1, 8), ratio(1, 11)
  if valid(_FOREARMS):
    r[(3, 4)], r[(6, 7)] = ratio(3, 4), ratio(6, 7)
  if valid(_THIGHS):
    r[(8, 9)], r[(11, 12)] = ratio(8, 9), ratio(11, 12)
    r[(9, 10)], r[(12, 13)] = r[(8, 9)], r[(11, 12)]
  if valid(range(18)):
    for p in _RATIO_PAIRS:
      r[p] = ratio(*p)
  for a, b in _SYMMETRIC:
    if isinstance(r[a], np.float32) and isinstance(r[b], np.float32):
      total = float(r[a] + r[b])  # float32 + float32 stays float32 (NumPy 1.x scalar rules)
    else:
      total = float(r[a]) + float(r[b])
    r[a] = r[b] = total / 2.0
  return {p: float(v) for p, v in r.items()}


def _hand_arms(pose: dict, reproduce_official: bool) -> tuple[int, int]:
  """(index of the hand moved with the right arm, index moved with the left arm)."""
  official = (1, 0)
  if reproduce_official:
    return official
  cand = pose["bodies"]["candidate"]
  present = present_joints(pose)
  if not (present[_R_WRIST] and present[_L_WRIST]):
    return official
  roots = pose["hands"][:, 0]
  located = [bool(pose["hands_score"][k, 0] > 0 and np.all(roots[k] > 0)) for k in (0, 1)]

  def dist(k, wrist):
    return float(np.linalg.norm(roots[k] - cand[wrist]))

  if all(located):
    as_official = dist(1, _R_WRIST) + dist(0, _L_WRIST)
    swapped = dist(0, _R_WRIST) + dist(1, _L_WRIST)
    return official if as_official <= swapped else (0, 1)
  for k in (0, 1):
    if located[k]:
      right = k if dist(k, _R_WRIST) <= dist(k, _L_WRIST) else 1 - k
      return right, 1 - right
  return official


def _move_chain(cand, hands, parent, child, joints, ratio, hand=None) -> None:
  offset = (cand[parent] - cand[child]) * (1.0 - ratio)
  cand[list(joints)] += offset
  if hand is not None:
    hands[hand] += offset


def _edit_frame(pose, r, ref68, reproduce_official):
  cand, hands = pose["bodies"]["candidate"], pose["hands"]
  right, left = _hand_arms(pose, reproduce_official)
  _move_chain(cand, hands, 1, 0, (0, 14, 15, 16, 17), r[(0, 1)])  # head follows the nose
  _move_chain(cand, hands, 1, 2, (2, 3, 4), r[(1, 2)], right)
  _move_chain(cand, hands, 1, 5, (5, 6, 7), r[(1, 5)], left)
  _move_chain(cand, hands, 2, 3, (3, 4), r[(2, 3)], right)
  _move_chain(cand, hands, 3, 4, (4,), r[(3, 4)], right)
  _move_chain(cand, hands, 5, 6, (6, 7), r[(5, 6)], left)
  _move_chain(cand, hands, 6, 7, (7,), r[(6, 7)], left)
  for a, b in ((0, 14), (0, 15), (14, 16), (15, 17)):
    _move_chain(cand, hands, a, b, (b,), r[(a, b)])
  _move_chain(cand, hands, 1, 8, (8,), r[(1, 8)])  # knees do not follow (official)
  _move_chain(cand, hands, 1, 11, (11,), r[(1, 11)])
  # Legs grow from the hip outwards: (child - parent) * (ratio - 1).
  for parent, child, joints in (
    (8, 9, (9, 10)),
    (9, 10, (10,)),
    (11, 12, (12, 13)),
    (12, 13, (13,)),
  ):
    cand[list(joints)] += (cand[child] - cand[parent]) * (r[(parent, child)] - 1.0)
  if ref68 is not None and pose["faces"] is not None and pose["faces"].size > 0:
    pose["faces"] = scale_face_to_reference(pose["faces"][0], ref68, cand[0])[None]
  return pose


def retarget_to_pose(ref_pose, driving_poses, *, anchor=0, reproduce_official=False) -> list[dict]:
  """The official `align_to_pose`: driving poses edited to the reference's limb ratios (official
  align_to_pose).

  Args:
    ref_pose: the reference image's pose dict.
    driving_poses: list of driving pose dicts (two hands each).
    anchor: index of the driving frame the reference is measured against, or None to pick it with
      `pick_anchor_frame` (the official scripts use 0).
    reproduce_official: keep the official hand assignment (hands[1] with the right arm, hands[0]
      with the left, official bug: align_to_pose hand assignment) instead of pairing each hand with
      its nearest wrist.

  Returns:
    New pose dicts (the inputs are not modified).
  """
  ref = as_pose(ref_pose, "ref_pose")
  frames = as_poses(driving_poses)
  for i, p in enumerate(frames):
    if p["hands"].shape[0] != 2:
      raise ValueError(
        f"driving_poses[{i}]: field 'hands' has shape {p['hands'].shape}; expected (2,21,2)"
      )
  if anchor is None:
    anchor = pick_anchor_frame(ref, frames)
  if not (isinstance(anchor, int | np.integer) and 0 <= anchor < len(frames)):
    raise ValueError(f"anchor must be a frame index in [0, {len(frames)}) or None, got {anchor!r}")
  best = frames[int(anchor)]
  require_usable(ref, "ref_pose")
  require_usable(best, f"driving_poses[{anchor}] (the anchor frame)")

  scaled = _scaled_reference(ref, best)
  r = _ratios(
    scaled["bodies"]["candidate"],
    np.asarray(scaled["bodies"]["score"], dtype=np.float32)[0],
    np.asarray(best["bodies"]["candidate"], dtype=np.float32),
    np.asarray(best["bodies"]["score"], dtype=np.float32)[0],
  )
  ref68 = None
  if scaled["faces"] is not None and scaled["faces"].size > 0:
    ref68 = np.asarray(scaled["faces"][0], dtype=np.float64)
  # as_poses returned copies, so the frames can be edited in place.
  return [_edit_frame(p, r, ref68, reproduce_official) for p in frames]
