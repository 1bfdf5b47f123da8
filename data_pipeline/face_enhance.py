"""Face enhancement / identity-robust driving poses (official face enhancement, DU:968-1222).

A random pose from the pose pool is aligned to the sample (scale about the neck, neck onto neck),
then the sample's head bones and face landmarks are moved towards the random person's proportions:
a limb change (p = limb_change_prob) rescales the neck-nose, nose-eye and eye-ear bones; a face
change (p = face_change_prob, or whenever the limbs changed) rescales the landmarks and replaces the
jaw line. Perturbed poses are drawn with the dim signal (`head_change` = limb change,
`face_change` = face or limb change). Everything works on normalised pose dicts with x scaled by
the frame aspect, so distances are isotropic; inputs are never modified.
"""

from __future__ import annotations

import copy

import numpy as np

from o2a_jax.pose import from_dwpose_raw

_NECK, _NOSE = 1, 0
_SHOULDERS, _HIPS, _EARS = (2, 5), (8, 11), (16, 17)
# Head bones (parent, child) in the order they are moved along the chain.
_HEAD_BONES = ((1, 0), (0, 14), (0, 15), (14, 16), (15, 17))
_FACE_ANCHORS_EYES = (list(range(36, 42)), list(range(42, 48)))
_FACE_NOSE_TIP, _FACE_MOUTH = 30, (48, 54)


def pool_pose(record: dict, target_ratio: float) -> dict:
  """Pose-pool record -> pose dict, centre-padded to H/W = target_ratio (`build_pose_dict`)."""
  cand = np.array(record["candidate"], dtype=np.float64)
  score = np.array(record["score"], dtype=np.float64)
  h, w = int(record["height"]), int(record["width"])
  if target_ratio > h / w:
    new_h, new_w = int(round(w * target_ratio)), w
    cand[..., 1] += (new_h - h) / 2
  else:
    new_h, new_w = h, int(round(h / target_ratio))
    cand[..., 0] += (new_w - w) / 2
  return from_dwpose_raw({"candidate": cand, "score": score}, new_h, new_w)


def _joint(pose: dict, j: int, conf: float):
  sub = pose["bodies"]["subset"][0]
  if j >= len(sub) or sub[j] < 0 or pose["bodies"]["score"][0][j] < conf:
    return None
  return np.asarray(pose["bodies"]["candidate"][int(sub[j])], dtype=np.float64)


def _dist(pose, a, b, ar, conf):
  pa, pb = _joint(pose, a, conf), _joint(pose, b, conf)
  if pa is None or pb is None:
    return None
  return float(np.hypot((pa[0] - pb[0]) * ar, pa[1] - pb[1]))


def _mid(pose, a, b, conf):
  pa, pb = _joint(pose, a, conf), _joint(pose, b, conf)
  return None if pa is None or pb is None else (pa + pb) / 2


def _map_points(pose: dict, fn) -> dict:
  """Applies fn to every detected point (body, hands, faces) of a copied pose."""
  out = copy.deepcopy(pose)
  out["bodies"]["candidate"] = fn(np.asarray(out["bodies"]["candidate"], dtype=np.float64))
  hands = np.asarray(out["hands"], dtype=np.float64)
  ok = (hands[..., 0] > 0) & (hands[..., 1] > 0)
  hands[ok] = fn(hands[ok])
  out["hands"] = hands
  if out.get("faces") is not None:
    faces = np.asarray(out["faces"], dtype=np.float64)
    ok = (faces[..., 0] > 0) & (faces[..., 1] > 0)
    faces[ok] = fn(faces[ok])
    out["faces"] = faces
  return out


def align_scale_translate(target: dict, rnd: dict, ar: float, conf: float = 0.5):
  """`align_pose_by_scale_and_translation`: the random pose scaled about its neck to the target's
  body size and moved onto the target's neck; None if no common reference length exists."""
  n_t, n_r = _joint(target, _NECK, conf), _joint(rnd, _NECK, conf)
  if n_t is None or n_r is None:
    return None
  sw_t, sw_r = _dist(target, *_SHOULDERS, ar, conf), _dist(rnd, *_SHOULDERS, ar, conf)
  hip_t, hip_r = _mid(target, *_HIPS, conf), _mid(rnd, *_HIPS, conf)
  if sw_t and sw_r and hip_t is not None and hip_r is not None:
    th_t, th_r = abs(hip_t[1] - n_t[1]), abs(hip_r[1] - n_r[1])
    sx, sy = sw_t / sw_r, (th_t / th_r if th_r > 1e-6 else sw_t / sw_r)
  elif sw_t and sw_r:
    sx = sy = sw_t / sw_r
  else:
    e_t, e_r = _dist(target, *_EARS, ar, conf), _dist(rnd, *_EARS, ar, conf)
    if not e_t or not e_r:
      return None
    sx = sy = e_t / e_r
  scale = np.array([sx, sy])
  return _map_points(rnd, lambda p: (p - n_r) * scale + n_t)


def _push(rng, r: float) -> float:
  """Ratios too close to 1 are pushed away (x1.2 or /1.2) with probability 0.9."""
  r = float(np.clip(r, 0.5, 2.0))
  if 0.9 < r < 1.1 and rng.random() < 0.9:
    r = max(r * 1.2, 1.1) if r >= 1.0 else min(r / 1.2, 0.9)
  return r


def _face_anchors(face: np.ndarray) -> np.ndarray:
  a, b = face[_FACE_ANCHORS_EYES[0]].mean(0), face[_FACE_ANCHORS_EYES[1]].mean(0)
  if b[0] < a[0]:
    a, b = b, a
  return np.stack([a, b, face[_FACE_NOSE_TIP], face[_FACE_MOUTH[0]], face[_FACE_MOUTH[1]]])


def _face_valid(pose: dict) -> bool:
  f = pose.get("faces")
  if f is None or len(f) == 0:
    return False
  f = np.asarray(f[0])
  return bool(np.all(f[:, 0] > 0) and np.all(f[:, 1] > 0))


def _scale_face(rng, face, rnd_face, nose, ar, alpha):
  """`_face_scale_only` then `_face_roundify` (DU:968-1041) for one frame, aspect-corrected."""
  f = np.asarray(face, dtype=np.float64) * [ar, 1.0]
  r = np.asarray(rnd_face, dtype=np.float64) * [ar, 1.0]
  centre = _face_anchors(f).mean(0)

  def ratio(a, b):
    ds, dr = np.linalg.norm(f[a] - f[b]), np.linalg.norm(r[a] - r[b])
    return _push(rng, dr / ds) if ds > 1e-6 else 1.0

  rx, ry = ratio(36, 45), ratio(33, 8)
  scale = np.array([1 + alpha * (rx - 1), 1 + alpha * (ry - 1)])
  out = (f - centre) * scale + centre
  if nose is not None:
    out += np.asarray(nose, dtype=np.float64) * [ar, 1.0] - out[_FACE_NOSE_TIP]
  # Least-squares affine from the random face's anchors to this face's, applied to the random jaw.
  src, dst = _face_anchors(r), _face_anchors(out)
  a, *_ = np.linalg.lstsq(np.c_[src, np.ones(5)], dst, rcond=None)
  out[:17] = np.c_[r[:17], np.ones(17)] @ a
  return out / [ar, 1.0]


def enhance(rng, poses: list, rnd_pose: dict, ar: float, *, limb_prob: float, face_prob: float):
  """Perturbs the driving poses' head and face geometry towards a random person.

  Returns (new poses, head_change, face_change); the poses are returned unchanged (and both flags
  False) when the random pose cannot be aligned or a needed face is missing. `ar` = W/H of the
  frame. The head bones are rescaled with probability `limb_prob` and the face blended with
  `face_prob`, both drawn once per clip; the blend weight is drawn once per frame.
  """
  aligned = align_scale_translate(poses[0], rnd_pose, ar)
  if aligned is None or not _face_valid(aligned) or not all(_face_valid(p) for p in poses):
    return poses, False, False
  limb = rng.random() < limb_prob
  face = rng.random() < face_prob
  if not (limb or face):
    return poses, False, False
  out = [copy.deepcopy(p) for p in poses]
  if limb:
    alpha = rng.uniform(0.0, 0.8)
    scales = {}
    for a, b in _HEAD_BONES:
      d_s, d_r = _dist(poses[0], a, b, ar, 0.3), _dist(aligned, a, b, ar, 0.3)
      scales[(a, b)] = 1 + alpha * (_push(rng, d_r / d_s) - 1) if d_s and d_r else 1.0
    for p in out:
      cand = np.asarray(p["bodies"]["candidate"], dtype=np.float64) * [ar, 1.0]
      sub = p["bodies"]["subset"][0]
      new = cand.copy()
      for a, b in _HEAD_BONES:
        if sub[a] < 0 or sub[b] < 0:
          continue
        ia, ib = int(sub[a]), int(sub[b])
        # The child moves with its parent's displacement plus its own bone rescaling.
        new[ib] = new[ia] + scales[(a, b)] * (cand[ib] - cand[ia])
      p["bodies"]["candidate"] = new / [ar, 1.0]
      if sub[_NOSE] >= 0 and p.get("faces") is not None:
        shift = (new[int(sub[_NOSE])] - cand[int(sub[_NOSE])]) / [ar, 1.0]
        p["faces"] = np.asarray(p["faces"], dtype=np.float64) + shift
  rnd_face = np.asarray(aligned["faces"][0])
  for p in out:
    nose = _joint(p, _NOSE, 0.0)
    f = np.asarray(p["faces"], dtype=np.float64).copy()
    f[0] = _scale_face(rng, f[0], rnd_face, nose, ar, rng.uniform(0.5, 1.0))
    p["faces"] = f
  return out, bool(limb), True
