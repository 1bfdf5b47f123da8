"""Puppet kinematics: joint angles -> 3-D joints -> COCO-WholeBody 133 keypoints (pixels + scores).

The body is a small kinematic tree in a body frame (x to the image right when the puppet faces the
camera, i.e. towards the puppet's *left*; y up; z towards the camera), rotated by the body yaw and
lean, put on the ground, and projected orthographically by the camera (`Camera`). The same 2-D
points feed the pose files and the puppet renderer, so the pose ground truth is exact.

COCO-WholeBody order: 0 nose, 1/2 left/right eye, 3/4 ears, 5/6 shoulders, 7/8 elbows, 9/10 wrists,
11/12 hips, 13/14 knees, 15/16 ankles, 17-19 left big toe / small toe / heel, 20-22 the right ones,
23-90 the 68 face landmarks, 91-111 the left hand, 112-132 the right hand (21 points each: wrist,
thumb 1-4, index 5-8, middle 9-12, ring 13-16, pinky 17-20).

Scores: 1 for a visible keypoint; 0 for a keypoint outside the frame, and for face landmarks (and
eyes, nose) on the side of the head turned away from the camera. A pose estimator reports such
points with a low score too; the renderer (`o2a_jax.pose.render`) then skips them.
"""

from __future__ import annotations

import dataclasses

import numpy as np

N_KP = 133
BODY = slice(0, 17)  # the 17 COCO body joints (feet follow at 17-22)
FACE = slice(23, 91)
LEFT_HAND = slice(91, 112)
RIGHT_HAND = slice(112, 133)
# Extra (non-COCO) points the renderer needs, appended after the 133 keypoints.
HEAD_CENTRE, NECK_BASE, PELVIS, HEAD_TOP = 133, 134, 135, 136
N_POINTS = 137

# Per-frame joint angles (radians) and offsets; a motion is a dict of (N,) arrays with these keys.
# Arms and legs: `_l` / `_r` suffix. `*_abd`: outward swing in the frontal plane (0 = hanging down,
# pi/2 = horizontal); `*_flex`: forward swing. The forearm and the shin have their own absolute
# angles; the hand has a curl (0 open, ~1.4 fist) and a finger spread.
ANGLE_KEYS = (
  "yaw", "lean", "root_x", "root_y", "head_yaw", "head_pitch", "head_roll",
  "shoulder_abd_l", "shoulder_flex_l", "elbow_abd_l", "elbow_flex_l", "curl_l", "spread_l",
  "shoulder_abd_r", "shoulder_flex_r", "elbow_abd_r", "elbow_flex_r", "curl_r", "spread_r",
  "hip_abd_l", "hip_flex_l", "knee_l", "hip_abd_r", "hip_flex_r", "knee_r",
)  # fmt: skip

REST = dict(
  yaw=0.0, lean=0.0, root_x=0.0, root_y=0.0, head_yaw=0.0, head_pitch=0.0, head_roll=0.0,
  shoulder_abd_l=0.15, shoulder_flex_l=0.0, elbow_abd_l=0.15, elbow_flex_l=0.2, curl_l=0.4,
  spread_l=0.15, shoulder_abd_r=0.15, shoulder_flex_r=0.0, elbow_abd_r=0.15, elbow_flex_r=0.2,
  curl_r=0.4, spread_r=0.15, hip_abd_l=0.05, hip_flex_l=0.0, knee_l=0.05, hip_abd_r=0.05,
  hip_flex_r=0.0, knee_r=0.05,
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Proportions:
  """Body lengths in world units (a human-like puppet is about 1.75 tall)."""

  head_r: float = 0.11  # head radius (height of the head ellipse / 2)
  head_aspect: float = 0.85  # head width / head height
  neck: float = 0.08
  torso: float = 0.52  # pelvis centre -> neck base
  shoulder_w: float = 0.19  # half width
  hip_w: float = 0.1  # half width
  upper_arm: float = 0.3
  forearm: float = 0.27
  hand: float = 0.18
  thigh: float = 0.44
  shin: float = 0.42
  foot: float = 0.24
  ankle_h: float = 0.07


# --- the 68-point face template (head frame, units of the head radius) ---------------------------


def _face_template() -> np.ndarray:
  """(68,2) x (image right), y (up) of the standard 68 landmarks on a frontal face."""
  pts = np.zeros((68, 2))
  phi = np.pi * np.arange(17) / 16
  pts[0:17] = np.stack([-0.86 * np.cos(phi), 0.15 - 0.98 * np.sin(phi)], -1)  # jaw
  bx = np.linspace(0.0, 1.0, 5)
  pts[17:22] = np.stack([-0.72 + 0.5 * bx, 0.46 + 0.08 * np.sin(np.pi * bx)], -1)  # right brow
  pts[22:27] = np.stack([0.22 + 0.5 * bx, 0.46 + 0.08 * np.sin(np.pi * bx)], -1)  # left brow
  pts[27:31] = np.stack([np.zeros(4), np.linspace(0.3, -0.18, 4)], -1)  # nose bridge
  pts[31:36] = np.stack(
    [np.linspace(-0.18, 0.18, 5), -0.26 - 0.04 * np.cos(np.linspace(-1, 1, 5))], -1
  )

  a = np.array([0, 1, 2, 3, 4, 5]) * np.pi / 3
  pts[36:42] = np.stack([-0.38 - 0.17 * np.cos(a), 0.22 + 0.08 * np.sin(a)], -1)  # right eye
  pts[42:48] = np.stack([0.38 - 0.17 * np.cos(a), 0.22 + 0.08 * np.sin(a)], -1)  # left eye
  m = np.arange(12) * np.pi / 6
  pts[48:60] = np.stack([-0.36 * np.cos(m), -0.52 + 0.11 * np.sin(m)], -1)  # outer lips
  m = np.arange(8) * np.pi / 4
  pts[60:68] = np.stack([-0.24 * np.cos(m), -0.52 + 0.04 * np.sin(m)], -1)  # inner lips
  return pts


FACE_2D = _face_template()


def _on_head(xy: np.ndarray, bulge: float = 0.9) -> np.ndarray:
  """Lifts frontal (x,y) points onto the front of the head ellipsoid: (...,3) and the normals."""
  x, y = xy[..., 0], xy[..., 1]
  z = bulge * np.sqrt(np.clip(1.0 - 0.55 * x**2 - 0.35 * y**2, 0.05, None))
  return np.stack([x, y, z], -1)


FACE_3D = _on_head(FACE_2D)
FACE_3D[30, 2] += 0.25  # the nose tip sticks out
NOSE_3D = FACE_3D[30]
EYES_3D = np.stack([FACE_3D[42:48].mean(0), FACE_3D[36:42].mean(0)])  # [left, right]
EARS_3D = np.array([[0.98, 0.12, -0.05], [-0.98, 0.12, -0.05]])  # [left, right]


# --- rotations ------------------------------------------------------------------------------------


def rot_y(a):
  """(...,3,3) yaw rotation (turns the front towards +x for positive a)."""
  c, s = np.cos(a), np.sin(a)
  z, o = np.zeros_like(c), np.ones_like(c)
  return np.stack([np.stack([c, z, s], -1), np.stack([z, o, z], -1), np.stack([-s, z, c], -1)], -2)


def rot_x(a):
  """Pitch: positive tips the top towards the camera (+z)."""
  c, s = np.cos(a), np.sin(a)
  z, o = np.zeros_like(c), np.ones_like(c)
  return np.stack([np.stack([o, z, z], -1), np.stack([z, c, -s], -1), np.stack([z, s, c], -1)], -2)


def rot_z(a):
  """Roll in the image plane (counter-clockwise in world coordinates for positive a)."""
  c, s = np.cos(a), np.sin(a)
  z, o = np.zeros_like(c), np.ones_like(c)
  return np.stack([np.stack([c, -s, z], -1), np.stack([s, c, z], -1), np.stack([z, z, o], -1)], -2)


def _apply(r, v):
  """r (N,3,3) applied to v (N,K,3) -> (N,K,3)."""
  return np.einsum("nij,nkj->nki", r, v)


def _apply_const(r, v):
  """r (N,3,3) applied to the same points v (K,3) -> (N,K,3)."""
  return np.einsum("nij,kj->nki", r, v)


def limb_dir(abd, flex, side):
  """(N,3) unit direction of a limb hanging down, swung out by `abd` and forward by `flex`."""
  return np.stack([side * np.sin(abd), -np.cos(abd) * np.cos(flex), np.cos(abd) * np.sin(flex)], -1)


def _unit(v):
  return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _hand(wrist, u, forward, curl, spread, length, thumb_side):
  """(N,21,3) hand points from the wrist along the forearm direction u."""
  v = _unit(np.cross(forward, u))
  v = np.where(np.linalg.norm(np.cross(forward, u), axis=-1, keepdims=True) < 1e-6, [1, 0, 0], v)
  n = np.cross(u, v)
  out = np.zeros((len(wrist), 21, 3))
  out[:, 0] = wrist
  palm, width = 0.45 * length, 0.42 * length
  curl = curl[:, None]
  # thumb: CMC, MCP, IP, tip
  base = wrist + 0.12 * palm * u + thumb_side * 0.3 * width * v
  tdir = _unit(0.65 * u + thumb_side * 0.75 * v)
  seg = [0.2, 0.17, 0.14]
  p = base
  out[:, 1] = p
  for j, s in enumerate(seg):
    c = 0.5 * curl * (j + 1) / 3
    d = _unit(np.cos(c) * tdir - np.sin(c) * n)
    p = p + s * length * d
    out[:, 2 + j] = p
  offsets = (0.36, 0.12, -0.12, -0.36)  # index .. pinky across the palm (thumb side positive)
  scales = (0.95, 1.0, 0.93, 0.75)
  for k, (off, sc) in enumerate(zip(offsets, scales)):
    ang = spread * off * 1.6 * thumb_side
    fdir = _unit(np.cos(ang)[:, None] * u + np.sin(ang)[:, None] * v)
    p = wrist + palm * u + thumb_side * off * width * v
    out[:, 5 + 4 * k] = p
    for j, s in enumerate((0.22, 0.15, 0.12)):
      c = curl * (0.6 + 0.35 * j)
      d = _unit(np.cos(c) * fdir - np.sin(c) * n)
      p = p + s * sc * length * d
      out[:, 6 + 4 * k + j] = p
  return out


def joints_3d(angles: dict[str, np.ndarray], prop: Proportions) -> tuple[np.ndarray, np.ndarray]:
  """Per-frame world points (N,137,3) and visibility (N,137) bool (before framing).

  The lowest foot point of every frame rests on the ground (y = 0) unless `root_y` lifts it.
  """
  a = {k: np.asarray(angles[k], np.float64) for k in ANGLE_KEYS}
  n = len(a["yaw"])
  P = np.zeros((n, N_POINTS, 3))
  vis = np.ones((n, N_POINTS), bool)
  neck = np.array([0.0, prop.torso, 0.0])
  side = {"l": 1.0, "r": -1.0}
  # Body frame (pelvis at the origin).
  shoulder = {s: neck + [side[s] * prop.shoulder_w, -0.03, 0.0] for s in "lr"}
  hip = {s: np.array([side[s] * prop.hip_w, 0.0, 0.0]) for s in "lr"}
  idx = {
    "l": dict(sh=5, el=7, wr=9, hip=11, kn=13, an=15, big=17, small=18, heel=19, hand=LEFT_HAND),
    "r": dict(sh=6, el=8, wr=10, hip=12, kn=14, an=16, big=20, small=21, heel=22, hand=RIGHT_HAND),
  }
  fwd = np.tile([0.0, 0.0, 1.0], (n, 1))
  for s in "lr":
    i = idx[s]
    sh = np.tile(shoulder[s], (n, 1))
    ua = limb_dir(a[f"shoulder_abd_{s}"], a[f"shoulder_flex_{s}"], side[s])
    el = sh + prop.upper_arm * ua
    fa = limb_dir(a[f"elbow_abd_{s}"], a[f"elbow_flex_{s}"], side[s])
    wr = el + prop.forearm * fa
    P[:, i["sh"]], P[:, i["el"]], P[:, i["wr"]] = sh, el, wr
    P[:, i["hand"]] = _hand(wr, fa, fwd, a[f"curl_{s}"], a[f"spread_{s}"], prop.hand, side[s])
    hp = np.tile(hip[s], (n, 1))
    kn = hp + prop.thigh * limb_dir(a[f"hip_abd_{s}"], a[f"hip_flex_{s}"], side[s])
    shin_flex = a[f"hip_flex_{s}"] - a[f"knee_{s}"]
    an = kn + prop.shin * limb_dir(a[f"hip_abd_{s}"], shin_flex, side[s])
    P[:, i["hip"]], P[:, i["kn"]], P[:, i["an"]] = hp, kn, an
    down = np.array([0.0, -prop.ankle_h, 0.0])
    P[:, i["heel"]] = an + down + [0.0, 0.0, -0.22 * prop.foot]
    P[:, i["big"]] = an + down + [-side[s] * 0.03 * prop.foot, 0.0, 0.75 * prop.foot]
    P[:, i["small"]] = an + down + [side[s] * 0.22 * prop.foot, 0.0, 0.62 * prop.foot]
  P[:, NECK_BASE] = neck
  P[:, PELVIS] = 0.0
  # Head: its own rotation (yaw, pitch, roll) about the neck, in the body frame.
  head_r = rot_z(a["head_roll"]) @ rot_y(a["head_yaw"]) @ rot_x(-a["head_pitch"])
  scale = np.array([prop.head_r * prop.head_aspect, prop.head_r, prop.head_r * 0.9])
  centre = neck + [0.0, prop.neck + 0.9 * prop.head_r, 0.0]
  pivot = neck + [0.0, prop.neck, 0.0]

  def head_points(local):  # (K,3) in head-radius units -> (N,K,3) body frame
    return pivot + _apply_const(head_r, (centre - pivot) + local * scale)

  P[:, FACE] = head_points(FACE_3D)
  P[:, 0] = head_points(NOSE_3D[None])[:, 0]
  P[:, 1:3] = head_points(EYES_3D)
  P[:, 3:5] = head_points(EARS_3D)
  P[:, HEAD_CENTRE] = head_points(np.zeros((1, 3)))[:, 0]
  P[:, HEAD_TOP] = head_points(np.array([[0.0, 1.0, 0.0]]))[:, 0]
  # Whole body: yaw about the vertical axis, then lean in the image plane about the pelvis.
  body_r = rot_z(a["lean"]) @ rot_y(a["yaw"])
  P = _apply(body_r, P)
  # Visibility of the face: its normal must point towards the camera.
  normal_r = body_r @ head_r
  face_n = _apply_const(normal_r, _unit(FACE_3D * [1, 1, 1.6]))[..., 2]
  vis[:, FACE] = face_n > 0.2
  vis[:, 0] = _apply_const(normal_r, np.array([[0.0, 0.0, 1.0]]))[:, 0, 2] > 0.1
  vis[:, 1:3] = _apply_const(normal_r, _unit(EYES_3D * [1, 1, 1.6]))[..., 2] > 0.15
  vis[:, 3:5] = _apply_const(normal_r, _unit(EARS_3D))[..., 2] > -0.6
  # Ground contact: the lowest foot point at y = 0, then the motion's own vertical offset.
  feet = P[:, 15:23, 1].min(axis=1)
  P[..., 1] -= feet[:, None]
  P[..., 0] += a["root_x"][:, None]
  P[..., 1] += a["root_y"][:, None]
  return P, vis


@dataclasses.dataclass(frozen=True)
class Camera:
  """Orthographic camera: pixel = (cx + s*x, cy - s*y); `s` pixels per world unit."""

  scale: float
  cx: float
  cy: float

  def project(self, P: np.ndarray) -> np.ndarray:
    """(...,3) world -> (...,3) pixel x, pixel y, depth (larger = nearer)."""
    return np.stack(
      [self.cx + self.scale * P[..., 0], self.cy - self.scale * P[..., 1], P[..., 2]], -1
    )


def keypoints(points_px: np.ndarray, vis: np.ndarray, height: int, width: int) -> np.ndarray:
  """(N,137,3) projected points -> (N,133,3) COCO-WholeBody [x, y, score] pixel keypoints.

  Score 1 for visible points inside the frame, else 0.
  """
  xy = points_px[:, :N_KP, :2]
  inside = (xy[..., 0] >= 0) & (xy[..., 0] <= width - 1) & (xy[..., 1] >= 0)
  inside &= xy[..., 1] <= height - 1
  score = (inside & vis[:, :N_KP]).astype(np.float64)
  return np.concatenate([xy, score[..., None]], -1)
