"""Drawing puppet frames from projected keypoints (numpy + OpenCV), and choosing the camera.

Limbs are thick capsules along the COCO-WholeBody bones (shoulder-elbow, elbow-wrist, hip-knee,
knee-ankle, heel-toes), the torso a polygon over shoulders and hips, the hands a palm polygon plus
finger segments through the 21 hand keypoints, the head an ellipse around the head centre with the
eyes, brows, mouth and marks placed on the face landmarks. Parts are painted back to front by depth.
Frames are drawn at `supersample` times the size and area-averaged down (anti-aliasing); with
`supersample=1` every pixel holds exactly one part colour. `render_frame` also returns a part-label
map (`PART_NAMES`) for evaluation and tests.
"""

from __future__ import annotations

import cv2
import numpy as np

from o2a_jax.puppet import skeleton as S
from o2a_jax.puppet.spec import Framing, PartStyle, PuppetSpec

PART_NAMES = (
  "background", "torso", "head", "hair", "upper_arm_l", "upper_arm_r", "forearm_l", "forearm_r",
  "hand_l", "hand_r", "thigh_l", "thigh_r", "shin_l", "shin_r", "foot_l", "foot_r", "neck", "face",
)  # fmt: skip
PART = {n: i for i, n in enumerate(PART_NAMES)}

# (part, start keypoint, end keypoint) of the limb capsules.
LIMBS = (
  ("upper_arm_l", 5, 7), ("upper_arm_r", 6, 8), ("forearm_l", 7, 9), ("forearm_r", 8, 10),
  ("thigh_l", 11, 13), ("thigh_r", 12, 14), ("shin_l", 13, 15), ("shin_r", 14, 16),
)  # fmt: skip
# Limb radii in world units (times `PuppetSpec.thickness`).
RADIUS = {"upper_arm": 0.045, "forearm": 0.037, "thigh": 0.062, "shin": 0.048, "foot": 0.035}


def limb_style(spec: PuppetSpec, part: str) -> PartStyle:
  """The `PartStyle` of a limb part name such as 'thigh_l'."""
  return getattr(spec, part[:-2])


def camera_for(
  world: np.ndarray, framing: Framing, prop: S.Proportions, height: int, width: int
) -> S.Camera:
  """Camera framing the motion `world` (N,137,3) as `framing` asks, fixed over the clip."""
  head_top = world[:, S.HEAD_TOP, 1].max()
  if framing.kind == "full":
    pts = world[:, : S.N_POINTS, :2].reshape(-1, 2)
    lo, hi = pts.min(0), pts.max(0)
    lo[1] -= 0.02
    extent_y, extent_x = hi[1] - lo[1], hi[0] - lo[0]
    scale = min(framing.fill * height / extent_y, 0.95 * width / max(extent_x, 1e-6))
    xc, yc = (lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2
  else:
    if framing.kind == "half":
      bottom = world[:, S.PELVIS, 1].mean() - 0.1 * prop.torso
    else:
      bottom = world[:, S.NECK_BASE, 1].mean() - 0.3 * prop.torso
    top = head_top + 0.03
    scale = framing.fill * height / (top - bottom)
    xc = world[:, [S.NECK_BASE, S.PELVIS, S.HEAD_CENTRE], 0].mean()
    yc = (top + bottom) / 2
  return S.Camera(
    scale=float(scale),
    cx=float(width / 2 + framing.dx * width - scale * xc),
    cy=float(height / 2 + framing.dy * height + scale * yc),
  )


def _texture(style: PartStyle, mask: np.ndarray, p0, p1) -> np.ndarray:
  """(h,w,3) uint8 colours of a textured part whose axis runs from p0 to p1 (pixels)."""
  h, w = mask.shape
  out = np.empty((h, w, 3), np.uint8)
  out[:] = style.base
  if style.texture == "solid":
    return out
  d = np.subtract(p1, p0).astype(np.float64)
  length = max(np.linalg.norm(d), 1e-6)
  d /= length
  yy, xx = np.mgrid[0:h, 0:w]
  along = ((xx - p0[0]) * d[0] + (yy - p0[1]) * d[1]) / length  # 0 at p0, 1 at p1
  if style.texture == "stripes":
    sel = np.floor(along / style.period) % 2 == 1
  elif style.texture == "band":
    sel = along > style.split
  elif style.texture == "dots":
    across = (-(xx - p0[0]) * d[1] + (yy - p0[1]) * d[0]) / length
    p = style.period
    fa, fc = (along % p) / p - 0.5, (across % p) / p - 0.5
    sel = fa * fa + fc * fc < 0.09
  else:
    raise ValueError(f"unknown texture {style.texture!r}")
  out[sel] = style.accent
  return out


class _Canvas:
  """Paints part masks with outline, fill colours and labels."""

  def __init__(self, background: np.ndarray, ss: int, outline: tuple | None, outline_px: int):
    H, W = background.shape[:2]
    self.img = cv2.resize(background, (W * ss, H * ss), interpolation=cv2.INTER_NEAREST)
    self.labels = np.zeros(self.img.shape[:2], np.uint8)
    self.outline = outline
    self.kernel = np.ones((2 * outline_px + 1,) * 2, np.uint8) if outline_px > 0 else None

  def blank(self) -> np.ndarray:
    return np.zeros(self.labels.shape, np.uint8)

  def paint(self, mask: np.ndarray, color, label: int, outline: bool = True) -> None:
    m = mask > 0
    if not m.any():
      return
    if outline and self.outline is not None and self.kernel is not None:
      ring = cv2.dilate(mask, self.kernel) > 0
      self.img[ring] = self.outline
      self.labels[ring] = label
    if isinstance(color, np.ndarray) and color.ndim == 3:
      self.img[m] = color[m]
    else:
      self.img[m] = color
    self.labels[m] = label


def _pt(p) -> tuple[int, int]:
  return int(round(p[0])), int(round(p[1]))


def render_frame(
  spec: PuppetSpec,
  points: np.ndarray,
  vis: np.ndarray,
  background: np.ndarray,
  camera_scale: float,
  *,
  supersample: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
  """One frame: uint8 (H,W,3) RGB and uint8 (H,W) part labels (`PART_NAMES`).

  `points` (137,3): pixel x, y and depth of the skeleton points (`skeleton.Camera.project`);
  `vis` (137,) visibility; `camera_scale` pixels per world unit (sizes of parts).
  """
  ss = int(supersample)
  H, W = background.shape[:2]
  unit = camera_scale * ss  # pixels per world unit on the big canvas
  P = points.astype(np.float64).copy()
  P[:, :2] = P[:, :2] * ss + (ss - 1) / 2  # pixel centres of the big canvas
  outline_px = max(1, int(round(0.012 * unit))) if spec.outline is not None else 0
  cv = _Canvas(background, ss, spec.outline, outline_px)
  th = spec.thickness
  parts = []  # (depth, callable)

  def capsule(mask, a, b, r):
    cv2.line(mask, _pt(a), _pt(b), 255, thickness=max(1, int(round(2 * r))), lineType=cv2.LINE_8)

  for name, i, j in LIMBS:

    def draw_limb(name=name, i=i, j=j):
      m = cv.blank()
      capsule(m, P[i], P[j], RADIUS[name[:-2]] * th * unit)
      cv.paint(m, _texture(limb_style(spec, name), m, P[i, :2], P[j, :2]), PART[name])

    parts.append(((P[i, 2] + P[j, 2]) / 2, draw_limb))

  for s, big, small, heel, ankle in (("l", 17, 18, 19, 15), ("r", 20, 21, 22, 16)):

    def draw_foot(s=s, big=big, small=small, heel=heel, ankle=ankle):
      m = cv.blank()
      toe = (P[big] + P[small]) / 2
      r = RADIUS["foot"] * th * unit
      capsule(m, P[heel], toe, r)
      capsule(m, P[ankle], (P[heel] + toe) / 2, r)
      cv.paint(m, spec.shoe, PART[f"foot_{s}"])

    parts.append((P[ankle, 2] + 0.01, draw_foot))

  for s, hand in (("l", S.LEFT_HAND), ("r", S.RIGHT_HAND)):

    def draw_hand(s=s, hand=hand):
      h = P[hand]
      m = cv.blank()
      palm = np.array([_pt(h[k]) for k in (0, 1, 5, 9, 13, 17)], np.int32)
      cv2.fillConvexPoly(m, cv2.convexHull(palm), 255)
      r = max(1, int(round(0.018 * th * unit)))
      for f in range(5):
        chain = [0, 1, 2, 3, 4] if f == 0 else [4 * f + 1, 4 * f + 2, 4 * f + 3, 4 * f + 4]
        for a, b in zip(chain[:-1], chain[1:]):
          capsule(m, h[a], h[b], r)
      cv.paint(m, spec.skin, PART[f"hand_{s}"])

    parts.append((P[hand, 2].mean() + 0.005, draw_hand))

  torso_z = (P[S.NECK_BASE, 2] + P[S.PELVIS, 2]) / 2

  def draw_torso():
    m = cv.blank()
    quad = np.array([_pt(P[k]) for k in (5, 6, 12, 11)], np.int32)
    cv2.fillConvexPoly(m, cv2.convexHull(quad), 255)
    capsule(m, P[S.NECK_BASE], P[S.PELVIS], 0.1 * th * unit)
    for a, b in ((5, 6), (6, 12), (12, 11), (11, 5)):
      capsule(m, P[a], P[b], 0.035 * th * unit)
    cv.paint(m, _texture(spec.torso, m, P[S.NECK_BASE, :2], P[S.PELVIS, :2]), PART["torso"])

  parts.append((torso_z - 0.02, draw_torso))
  parts.append(
    (max(P[S.HEAD_CENTRE, 2], torso_z) + 0.05, lambda: _draw_head(cv, spec, P, vis, unit))
  )
  for _, fn in sorted(parts, key=lambda t: t[0]):
    fn()
  img = cv.img
  if ss > 1:
    img = cv2.resize(img, (W, H), interpolation=cv2.INTER_AREA)
  labels = cv.labels[ss // 2 :: ss, ss // 2 :: ss]
  return img, labels


def _draw_head(cv: _Canvas, spec: PuppetSpec, P: np.ndarray, vis: np.ndarray, unit: float):
  prop = spec.proportions
  c = P[S.HEAD_CENTRE, :2]
  up = P[S.HEAD_TOP, :2] - c
  ry = max(np.linalg.norm(up), 1.0)
  up = up / ry
  angle = float(np.degrees(np.arctan2(up[0], -up[1])))  # image-plane roll of the head
  rx = prop.head_r * prop.head_aspect * unit
  facing = (P[0, 2] - P[S.HEAD_CENTRE, 2]) / max(prop.head_r, 1e-6)  # ~ cos of the head yaw
  hair = spec.hair_style

  # Neck first (under the head).
  m = cv.blank()
  cv2.line(m, _pt(P[S.NECK_BASE]), _pt(c), 255, max(1, int(round(0.7 * rx))))
  cv.paint(m, spec.skin, PART["neck"])

  def ellipse(mask, centre, axes, ang=angle):
    cv2.ellipse(
      mask,
      _pt(centre),
      (max(1, int(round(axes[0]))), max(1, int(round(axes[1])))),
      ang,
      0,
      360,
      255,
      -1,
    )

  if hair == "long":
    m = cv.blank()
    ellipse(m, c - up * 0.5 * ry, (rx * 1.15, ry * 1.45))
    cv.paint(m, spec.hair, PART["hair"])
  if hair == "bun":
    m = cv.blank()
    cv2.circle(m, _pt(c + up * 1.05 * ry), max(1, int(round(0.45 * ry))), 255, -1)
    cv.paint(m, spec.hair, PART["hair"])
  head = cv.blank()
  ellipse(head, c, (rx, ry))
  back = facing < -0.2 and hair != "bald"
  cv.paint(head, spec.hair if back else spec.skin, PART["hair" if back else "head"])
  if hair in ("short", "spiky", "long", "bun") and not back:
    # A cap: the part of the head above a line through the upper forehead.
    yy, xx = np.mgrid[0 : head.shape[0], 0 : head.shape[1]]
    level = 0.45 if hair != "spiky" else 0.55
    above = (xx - c[0]) * up[0] + (yy - c[1]) * up[1] > level * ry
    cap = (head > 0) & above
    if hair == "spiky":
      side = np.array([-up[1], up[0]])
      for k in (-0.6, -0.2, 0.2, 0.6):
        base = c + up * 0.75 * ry + side * k * rx
        tri = np.array(
          [
            _pt(base - side * 0.3 * rx),
            _pt(base + side * 0.3 * rx),
            _pt(base + up * 0.6 * ry + side * k * 0.3 * rx),
          ],
          np.int32,
        )
        m = cv.blank()
        cv2.fillConvexPoly(m, tri, 255)
        cap |= m > 0
    cv.paint(cap.astype(np.uint8) * 255, spec.hair, PART["hair"])
  if facing < 0.2:
    return
  face = P[S.FACE, :2]
  fv = vis[S.FACE]
  fpx = ry  # face features are sized by the head radius in pixels
  # Brows and mouth.
  m = cv.blank()
  for a, b in ((17, 22), (22, 27)):
    if fv[a:b].all():
      pts = np.array([_pt(p) for p in face[a:b]], np.int32)
      cv2.polylines(m, [pts], False, 255, max(1, int(round(0.08 * fpx))))
  cv.paint(m, spec.hair, PART["face"], outline=False)
  if fv[48:60].all():
    m = cv.blank()
    cv2.fillPoly(m, [np.array([_pt(p) for p in face[48:60]], np.int32)], 255)
    cv2.polylines(m, [np.array([_pt(p) for p in face[48:60]], np.int32)], True, 255, 1)
    cv.paint(m, spec.mouth, PART["face"], outline=False)
  # Marks on the cheeks.
  cheek_l, cheek_r = (face[12] * 0.6 + face[54] * 0.4), (face[4] * 0.6 + face[48] * 0.4)
  r_mark = max(1, int(round(0.09 * fpx)))
  m = cv.blank()
  if spec.mark == "mole" and fv[12]:
    cv2.circle(m, _pt(cheek_l), r_mark, 255, -1)
  elif spec.mark == "scar" and fv[4]:
    d = np.array([0.25, 0.3]) * fpx
    cv2.line(m, _pt(cheek_r - d), _pt(cheek_r + d), 255, max(1, r_mark // 2 + 1))
  elif spec.mark == "freckles":
    for ch, ok in ((cheek_l, fv[12]), (cheek_r, fv[4])):
      if ok:
        for off in ((-0.12, 0), (0.12, 0), (0, 0.1)):
          cv2.circle(m, _pt(ch + np.array(off) * fpx), max(1, r_mark // 2), 255, -1)
  elif spec.mark == "blush":
    for ch, ok in ((cheek_l, fv[12]), (cheek_r, fv[4])):
      if ok:
        cv2.circle(m, _pt(ch), int(round(0.16 * fpx)) + 1, 255, -1)
  cv.paint(m, spec.mark_color, PART["face"], outline=False)
  # Eyes: sclera, iris in the eye colour, pupil; on the visible eye keypoints.
  r_eye = max(1.0, spec.eye_size * fpx)
  for k in (1, 2):
    if not vis[k]:
      continue
    for radius, color in (
      (r_eye, (250, 250, 250)),
      (0.65 * r_eye, spec.eye),
      (0.3 * r_eye, (15, 15, 15)),
    ):
      m = cv.blank()
      cv2.circle(m, _pt(P[k]), max(1, int(round(radius))), 255, -1)
      cv.paint(m, color, PART["face"], outline=False)
