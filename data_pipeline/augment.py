"""Sample augmentations of official training recipe as pure functions of (inputs, numpy Generator).

Geometry is expressed as nearest-neighbour index maps instead of resampled images: the official
code zeroes regions and zooms at the original resolution, then centre-crops and nearest-resizes to
the bucket size. Nearest resampling samples pixels pointwise, so gathering the original image with
the composed index map and zeroing the gathered pixels whose source lies in the masked region gives
exactly the official result while touching only H·W output pixels.

Regions (masks) are lists of boxes `(x1, y1, x2, y2)` in original pixels (end exclusive), possibly
inverted ("outside this box"); `rasterize` evaluates them on an index map.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from o2a_jax.vae.strides import latent_frames

# ----------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class IndexMap:
  """Output pixel (r, c) takes source pixel (rows[r], cols[c])."""

  rows: np.ndarray
  cols: np.ndarray

  def gather(self, image: np.ndarray) -> np.ndarray:
    """Channels-last (..., h0, w0, C) -> (..., H, W, C) by nearest lookup."""
    # Two 1-D takes are several times faster than one broadcast fancy index.
    return np.take(np.take(image, self.rows, axis=-3), self.cols, axis=-2)

  def then(self, other: IndexMap) -> IndexMap:
    """The map applying `self` first (at source resolution), then `other` (self's output)."""
    return IndexMap(self.rows[other.rows], self.cols[other.cols])


def _nearest(src: int, dst: int) -> np.ndarray:
  # torch F.interpolate(mode="nearest"): src index = floor(dst_index * src / dst).
  return np.minimum((np.arange(dst) * (src / dst)).astype(np.int64), src - 1)


def crop_resize_map(h0: int, w0: int, height: int, width: int) -> IndexMap:
  """Centre crop to the target aspect, then nearest resize (`get_video_transform`)."""
  if w0 / h0 > width / height:
    ch, cw = h0, int(round(h0 * width / height))
  else:
    ch, cw = int(round(w0 * height / width)), w0
  ch, cw = max(1, min(ch, h0)), max(1, min(cw, w0))
  top, left = (h0 - ch) // 2, (w0 - cw) // 2
  return IndexMap(top + _nearest(ch, height), left + _nearest(cw, width))


def zoom_map(h: int, w: int, z: float) -> IndexMap:
  """Nearest upsample by z, then centre crop back to (h, w) (the official zoom-in)."""
  zh, zw = max(h, int(h * z)), max(w, int(w * z))
  top, left = (zh - h) // 2, (zw - w) // 2
  return IndexMap(_nearest(h, zh)[top : top + h], _nearest(w, zw)[left : left + w])


@dataclasses.dataclass(frozen=True)
class Region:
  """Union of boxes (x1, y1, x2, y2), end exclusive, in source pixels; `outside` inverts it."""

  boxes: tuple = ()
  outside: bool = False

  @property
  def empty(self) -> bool:
    return not self.boxes and not self.outside


def rasterize(region: Region, m: IndexMap) -> np.ndarray:
  """bool (H, W): output pixels whose source pixel lies in the region."""
  out = np.zeros((len(m.rows), len(m.cols)), dtype=bool)
  for x1, y1, x2, y2 in region.boxes:
    out |= ((m.rows >= y1) & (m.rows < y2))[:, None] & ((m.cols >= x1) & (m.cols < x2))[None, :]
  return ~out if region.outside else out


# ----------------------------------------------------------------------------- pose boxes


def expand_box(box, h0: int, w0: int, frac: float) -> tuple[int, int, int, int]:
  """Grow each side by frac of the box size, clip to the image, integer pixels."""
  x1, y1, x2, y2 = box
  bw, bh = x2 - x1, y2 - y1
  x1, x2 = x1 - frac * bw, x2 + frac * bw
  y1, y2 = y1 - frac * bh, y2 + frac * bh
  return (
    int(max(0, np.floor(x1))),
    int(max(0, np.floor(y1))),
    int(min(w0, np.ceil(x2))),
    int(min(h0, np.ceil(y2))),
  )


def face_box(pose: dict, h0: int, w0: int, min_score: float = 0.8):
  """Face box of the 68 landmarks (top raised by 40 %, expanded 10 %), or None.

  `draw_face_mask_frompose` (DU:326-390): requires a mean landmark score >= 0.8.
  """
  faces, scores = pose.get("faces"), pose.get("faces_score")
  if faces is None or len(faces) == 0 or float(np.mean(scores[0])) < min_score:
    return None
  pts = np.asarray(faces[0], dtype=np.float64)
  ok = (pts[:, 0] > 0) & (pts[:, 1] > 0) & (np.asarray(scores[0]) >= 0.3)
  if ok.sum() < 3:
    return None
  xs, ys = pts[ok, 0] * w0, pts[ok, 1] * h0
  x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
  y1 -= 0.4 * (y2 - y1)
  box = expand_box((x1, y1, x2, y2), h0, w0, 0.1)
  return box if box[2] > box[0] and box[3] > box[1] else None


def hand_boxes(pose: dict, h0: int, w0: int, min_score: float = 0.8) -> list:
  """Boxes of the hands (all 21 points, mean score >= 0.8, expanded 20 %; DU:393-446).

  Returns one entry per hand, None where the hand fails the score test.
  """
  out = []
  for pts, sc in zip(np.asarray(pose["hands"]), np.asarray(pose["hands_score"])):
    if float(np.mean(sc)) < min_score:
      out.append(None)
      continue
    xs, ys = pts[:, 0] * w0, pts[:, 1] * h0
    box = expand_box((xs.min(), ys.min(), xs.max(), ys.max()), h0, w0, 0.2)
    out.append(box if box[2] > box[0] and box[3] > box[1] else None)
  return out


def latent_groups(frames: int) -> list[list[int]]:
  """Pixel frames of each latent frame: pixel frame i -> latent (i+3)//4."""
  groups = [[] for _ in range(latent_frames(frames))]
  for i in range(frames):
    groups[(i + 3) // 4].append(i)
  return groups


def face_regions(poses: list, h0: int, w0: int, hand_mask: bool) -> list[Region]:
  """Per latent frame: union of face (and hand) boxes of its pixel frames.

  A part (the face, each hand) is left out of a latent frame if any of its pixel frames fails the
  score test (official reference masking augmentation "Afterwards").
  """
  per_frame_face = [face_box(p, h0, w0) for p in poses]
  per_frame_hands = [hand_boxes(p, h0, w0) if hand_mask else [] for p in poses]
  regions = []
  for group in latent_groups(len(poses)):
    boxes = []
    faces = [per_frame_face[i] for i in group]
    if all(b is not None for b in faces):
      boxes += faces
    n_hands = min((len(per_frame_hands[i]) for i in group), default=0)
    for k in range(n_hands):
      hb = [per_frame_hands[i][k] for i in group]
      if all(b is not None for b in hb):
        boxes += hb
    regions.append(Region(tuple(boxes)))
  return regions


def ocr_regions(ocr_boxes, frame_indices, frames: int, h0: int, w0: int) -> list[Region]:
  """Per latent frame: text boxes (expanded by 10 % of their size, at most 20 px per side)."""
  groups = latent_groups(frames)
  if ocr_boxes is None:
    return [Region() for _ in groups]
  regions = []
  for group in groups:
    boxes = []
    for i in group:
      src = int(frame_indices[i])
      for b in ocr_boxes[src] if src < len(ocr_boxes) else ():
        b = np.asarray(b, dtype=np.float64).reshape(-1, 2)  # [x1,y1,x2,y2] or 4 corner points
        x1, y1 = b.min(axis=0)
        x2, y2 = b.max(axis=0)
        px, py = min(0.1 * (x2 - x1), 20.0), min(0.1 * (y2 - y1), 20.0)
        boxes.append((
          int(max(0, np.floor(x1 - px))),
          int(max(0, np.floor(y1 - py))),
          int(min(w0, np.ceil(x2 + px))),
          int(min(h0, np.ceil(y2 + py))),
        ))  # fmt: skip
    regions.append(Region(tuple(boxes)))
  return regions


# ----------------------------------------------------------------------------- reference masking


@dataclasses.dataclass
class RefPlan:
  """What the reference-masking strategy decided for one sample (all in source pixels)."""

  case: str = "none"  # pose_ref_drop | ref_drop | face_crop | center_crop | rectangle | none
  drop_pose: bool = False  # pose video black
  drop_ref: bool = False  # reference black, mask empty
  drop_ref_pose: bool = False  # reference pose black
  region: Region = dataclasses.field(default_factory=Region)  # inpaint region (mask = 1)
  keep_box: tuple | None = None  # the kept crop of a face-centred crop
  ref_keep: bool = False  # pose dropped, reference kept (T = 1: target = unmasked reference)
  zoom_ref: float = 1.0
  zoom_video: float = 1.0
  # Official bug: second draw for the reference drop quirk (images, reproduce_official): the
  # reference is zoomed twice, the mask once and the reference pose not at all.
  ref_zoom_quirk: bool = False


def face_centred_crop(rng, fbox, h0: int, w0: int, aspect_wh: float, bottom: float = 0.9):
  """The kept box (x1, y1, x2, y2) of a face-centred crop, or None when none fits (DU:611-710).

  `aspect_wh` = W/H of the target bucket; the face box always lies inside the kept box.
  """
  fx1, fy1, fx2, fy2 = fbox
  fh = fy2 - fy1
  y1 = max(0, fy1 - int(0.1 * fh))
  lo = fy2 + int(0.1 * fh)
  hi = max(lo, int(bottom * h0))
  y2 = int(rng.integers(lo, hi + 1))
  if y2 <= y1 + 10:
    return None
  crop_h = y2 - y1
  crop_w = int(crop_h * aspect_wh)
  xlo, xhi = max(0, fx2 - crop_w), min(w0 - crop_w, fx1)
  if xlo > xhi:
    return None
  x1 = int(rng.integers(xlo, xhi + 1))
  return (x1, y1, x1 + crop_w, y2)


def random_rectangle(rng, h0: int, w0: int) -> tuple[int, int, int, int]:
  rh = int(rng.integers(int(0.05 * h0), max(int(0.05 * h0), int(0.2 * h0)) + 1))
  rw = int(rng.integers(int(0.05 * w0), max(int(0.05 * w0), int(0.2 * w0)) + 1))
  y = int(rng.integers(0, h0 - rh + 1))
  x = int(rng.integers(0, w0 - rw + 1))
  return (x, y, x + rw, y + rh)


@dataclasses.dataclass(frozen=True)
class MaskingOdds:
  """Probabilities of the reference-masking augmentation (one stage of the official recipe; the
  `config.data` names are in brackets)."""

  pose_drop: float = 0.0  # pose, reference and reference pose all dropped (pose_cfg)
  ref_drop: float = 0.0  # the reference dropped (refimg_cfg)
  crop: float = 0.0  # a face-centred crop of the reference (refimg_crop)
  zoom: float = 0.0  # the reference or the video zoomed in (zoomin)
  keep: float = 0.0  # the target is the unmasked reference, pose dropped (ref_keep)


def _zoom(plan: RefPlan, rng, odds: MaskingOdds, zmax: float) -> None:
  if odds.zoom <= 0:
    return
  q = rng.random()
  z = 1.0 + rng.uniform(0.0, zmax)
  if q < odds.zoom / 2:
    plan.zoom_ref = z
  elif q < odds.zoom:
    plan.zoom_video = z


def plan_video_reference(
  rng, odds: MaskingOdds, ref_pose: dict, h0: int, w0: int, aspect_wh: float
) -> RefPlan:
  """`apply_random_cropping_strategy_v2` (official reference masking augmentation, videos and
  single-frame video samples).
  """
  plan = RefPlan()
  p = rng.random()
  if p < odds.pose_drop:
    plan.case, plan.drop_pose, plan.drop_ref, plan.drop_ref_pose = "pose_ref_drop", True, True, True
    return plan
  if p < odds.pose_drop + odds.ref_drop:
    plan.case, plan.drop_ref = "ref_drop", True
    return plan
  fbox = face_box(ref_pose, h0, w0)
  if p < odds.pose_drop + odds.ref_drop + odds.crop and fbox is not None:
    keep = face_centred_crop(rng, fbox, h0, w0, aspect_wh)
    if keep is not None:
      plan.case, plan.keep_box, plan.region = "face_crop", keep, Region((keep,), outside=True)
  elif rng.random() < 0.2:
    plan.case, plan.region = "rectangle", Region((random_rectangle(rng, h0, w0),))
  if rng.random() < odds.keep:
    plan.ref_keep, plan.drop_pose, plan.drop_ref_pose = True, True, True
    return plan
  _zoom(plan, rng, odds, 0.2)
  return plan


def plan_image_reference(
  rng, odds: MaskingOdds, src_pose: dict, h0: int, w0: int, aspect_wh: float, same_image: bool,
  *, official: bool = False,
) -> RefPlan:  # fmt: skip
  """`apply_image_augmentation_strategy_v2` (official reference masking augmentation images), fixed
  or official (official bug: second draw for the reference drop).

  Fixed (default): one draw decides pose+reference drop / reference drop, and both return; zoom
  treats reference, mask and reference pose alike. Official: a second independent draw for the
  reference drop, the pose-drop branch falls through to ref_keep/zoom, and the reference-zoom quirk.
  In both modes a same-image pair (stage 1 `--only_ref`) is always masked, since its target would
  otherwise be a copy of the reference (this part of official bug: second draw for the reference
  drop is kept on purpose).
  """
  plan = RefPlan()
  u = rng.random()
  dropped = False
  if u < odds.pose_drop:
    plan.case, plan.drop_pose, plan.drop_ref, plan.drop_ref_pose = "pose_ref_drop", True, True, True
    dropped = True
    if not official:
      return plan
  elif (rng.random() if official else u) < odds.pose_drop + odds.ref_drop:
    plan.case, plan.drop_ref = "ref_drop", True
    dropped = True
    if not official:
      return plan
  if not dropped:
    if odds.crop == 0 or not same_image:
      return plan
    fbox = face_box(src_pose, h0, w0)
    keep = None if fbox is None else face_centred_crop(rng, fbox, h0, w0, aspect_wh, bottom=0.75)
    if keep is not None:
      plan.case = "face_crop"
    else:  # `_calculate_center_crop_bbox`: keep the central 70 %
      keep = (int(0.15 * w0), int(0.15 * h0), int(0.85 * w0), int(0.85 * h0))
      plan.case = "center_crop"
    plan.keep_box, plan.region = keep, Region((keep,), outside=True)
  if rng.random() < odds.keep:
    plan.ref_keep, plan.drop_pose, plan.drop_ref_pose = True, True, True
    return plan
  _zoom(plan, rng, odds, 0.3)
  plan.ref_zoom_quirk = official and plan.zoom_ref != 1.0
  return plan


# ----------------------------------------------------------------------------- reference noise


def reference_noise(
  rng, ref: np.ndarray, mask: np.ndarray, *, prob: float, log_mean: float, log_std: float,
  double_exp: bool = False,
) -> tuple[np.ndarray, float]:  # fmt: skip
  """GaussianNoiseAdder (official reference noise augmentation) on a [-1,1] reference; returns
  (reference, sigma or 0).

  With probability `prob` and only for non-black references, adds sigma·N(0,1) to the pixels
  outside the inpaint mask (mask < 0.5). sigma = exp(N(log_mean, log_std)) (fixed, default) or,
  with `double_exp`, the official exp(exp(N(log_mean, log_std))) (official bug: double exp in the
  reference noise sigma).
  """
  if rng.random() >= prob or float(ref.max()) <= -0.99:
    return ref, 0.0
  log_sigma = rng.normal(log_mean, log_std)
  sigma = float(np.exp(np.exp(log_sigma)) if double_exp else np.exp(log_sigma))
  noise = rng.standard_normal(ref.shape, dtype=np.float32) * np.float32(sigma)
  keep = (mask < 0.5).astype(np.float32)
  return ref + noise * keep, sigma
