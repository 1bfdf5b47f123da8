"""Inference preprocessing (official inference inputs, inference resolution, official inference
preprocessing): from a reference and driving poses to the model's inputs.

Dims: F pixel frames, H/W height/width.

`prepare` follows the official `load_poses_whole_video` + `process_one`: driving poses are taken at
the reference's size (keypoints mapped through the same centre crop + resize the official code
applies to the driving frames), then

- mode "ref": the reference keeps its layout; the reference pose is drawn without face; nothing is
  outpainted; with `retarget`, the driving poses are retargeted to the reference's proportions
  (`retarget_to_reference`, which needs raw COCO-WholeBody keypoints);
- mode "pose": the reference is translated onto the driving anchor pose (`translate_reference`,
  outpainting mask where it no longer covers the frame); with `retarget`, the driving poses take
  the reference's limb ratios (`retarget_to_pose`, hand assignment fixed);

every driving pose is drawn at the reference size with the face flags and everything is centre
cropped and resized (PIL bicubic, as `resizecrop`) to the inference size, whose short side is
capped (`max_short`: 384 for 1.3B, 576 for 14B) and floored to multiples of 16.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image
from tqdm import tqdm

from o2a_jax import pose as pose_lib
from o2a_jax.pose.coco import check_kp133, dwpose_from_meta, metas_from_kp133
from o2a_jax.pose.schema import as_pose, present_joints

MODES = ("ref", "pose")
MULTIPLE = 16  # VAE x8 and patch x2


@dataclasses.dataclass
class Poses:
  """Driving (or reference) poses as read from a file or estimated.

  Exactly one of `kp133` (F, 133, 3) COCO-WholeBody keypoints in pixels of a width x height frame,
  or `dicts` (DWPose-style pose dicts, coordinates normalised to a width x height frame; width and
  height may be None when unknown, e.g. official .npy files: then the frame is assumed to have the
  reference's aspect ratio).
  """

  kp133: np.ndarray | None = None
  dicts: list[dict] | None = None
  width: int | None = None
  height: int | None = None

  def __post_init__(self):
    if (self.kp133 is None) == (self.dicts is None):
      raise ValueError("Poses needs exactly one of kp133 or dicts")
    if self.kp133 is not None:
      self.kp133 = check_kp133(self.kp133, "keypoints", frames=True)
      if self.width is None or self.height is None:
        raise ValueError("pixel keypoints need the width and height they refer to")

  def __len__(self) -> int:
    return len(self.kp133) if self.kp133 is not None else len(self.dicts)

  def check_usable(self, name: str) -> None:
    """Raises unless some frame has a detected body joint (score > 0): poses without any would
    animate a blank skeleton, silently."""
    if self.kp133 is not None:
      usable = bool(np.any(self.kp133[:, :23, 2] > 0))  # body and feet joints
    else:
      usable = any(np.any(present_joints(as_pose(d))) for d in self.dicts)
    if not usable:
      raise ValueError(
        f"{name}: none of its {len(self)} frames has a usable body joint (every confidence is 0 "
        "or every joint is missing), so it would animate a blank pose; check the pose file or "
        "the pose estimation (was a person detected?)"
      )

  def select(self, index) -> Poses:
    """The frames at `index` (a slice or an index array)."""
    if self.kp133 is not None:
      return Poses(kp133=self.kp133[index], width=self.width, height=self.height)
    idx = np.arange(len(self.dicts))[index]
    return Poses(dicts=[self.dicts[i] for i in idx], width=self.width, height=self.height)


@dataclasses.dataclass
class Prepared:
  """The model's inputs: uint8 image (H,W,3), float mask (H,W) in [0,1] (1 = outpaint), uint8
  reference pose drawing (H,W,3) and uint8 driving pose drawings (F,H,W,3)."""

  image: np.ndarray
  mask: np.ndarray
  ref_pose: np.ndarray
  poses: np.ndarray


def crop_box(src_h: int, src_w: int, dst_h: int, dst_w: int) -> tuple[float, float, float, float]:
  """(x0, y0, crop_w, crop_h): the centre crop of a src frame with the dst aspect ratio."""
  if src_h * dst_w > src_w * dst_h:  # source is taller: crop rows
    ch = src_w * dst_h / dst_w
    return 0.0, (src_h - ch) / 2, float(src_w), ch
  cw = src_h * dst_w / dst_h
  return (src_w - cw) / 2, 0.0, cw, float(src_h)


def resize_crop(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Centre crop to the target aspect ratio, then PIL bicubic resize (the official `resizecrop`).

  uint8 (H,W,3) or (H,W) in, uint8 (height, width[, 3]) out.
  """
  image = np.asarray(image)
  h, w = image.shape[:2]
  if (h, w) == (height, width):
    return image.copy()
  x0, y0, cw, ch = crop_box(h, w, height, width)
  box = (int(round(x0)), int(round(y0)), int(round(x0 + cw)), int(round(y0 + ch)))
  im = Image.fromarray(image).crop(box).resize((width, height), Image.BICUBIC)
  return np.asarray(im)


def map_keypoints(kp: np.ndarray, src_w: int, src_h: int, dst_w: int, dst_h: int) -> np.ndarray:
  """Pixel keypoints (..., 3) of a src frame -> pixels of its `resize_crop` to dst."""
  kp = np.array(kp, np.float64)
  x0, y0, cw, ch = crop_box(src_h, src_w, dst_h, dst_w)
  kp[..., 0] = (kp[..., 0] - x0) * dst_w / cw
  kp[..., 1] = (kp[..., 1] - y0) * dst_h / ch
  return kp


def _map_dict(pose: dict, src_w: int, src_h: int, dst_w: int, dst_h: int) -> dict:
  """Normalised pose dict of a src frame -> normalised coordinates of its crop to dst's aspect."""
  x0, y0, cw, ch = crop_box(src_h, src_w, dst_h, dst_w)
  if (x0, y0) == (0.0, 0.0):
    return pose

  def remap(xy):
    if xy is None:
      return None
    xy = np.array(xy, np.float64)
    missing = np.all(xy == -1, axis=-1)  # DWPose marks dropped hand/face points with -1
    out = np.stack([(xy[..., 0] * src_w - x0) / cw, (xy[..., 1] * src_h - y0) / ch], -1)
    out[missing] = -1
    return out

  b = pose["bodies"]
  return {
    **pose,
    "bodies": {**b, "candidate": remap(b["candidate"])},
    "hands": remap(pose["hands"]),
    "faces": remap(pose["faces"]),
  }


def inference_size(
  height: int,
  width: int,
  *,
  max_short: int | None = None,
  size: tuple[int, int] | None = None,
) -> tuple[int, int]:
  """The (H, W) to sample at (official inference resolution).

  `size` (H, W) explicitly, else the input size with its short side capped at `max_short`; both
  sides floored to multiples of 16. Raises ValueError for sizes that end up below 16.
  """
  if size is not None:
    h, w = (int(s) for s in size)
    if h < MULTIPLE or w < MULTIPLE or h % MULTIPLE or w % MULTIPLE:
      raise ValueError(f"--size {h}x{w}: both sides must be positive multiples of {MULTIPLE}")
    return h, w
  if height < 1 or width < 1:
    raise ValueError(f"bad image size {height}x{width}")
  h, w = float(height), float(width)
  if max_short is not None:
    if max_short < MULTIPLE:
      raise ValueError(f"--max-short must be at least {MULTIPLE}, got {max_short}")
    if min(h, w) > max_short:
      s = max_short / min(h, w)
      h, w = h * s, w * s
  h, w = int(h) // MULTIPLE * MULTIPLE, int(w) // MULTIPLE * MULTIPLE
  if h < MULTIPLE or w < MULTIPLE:
    raise ValueError(
      f"image size {height}x{width} is too small: inference needs at least "
      f"{MULTIPLE}x{MULTIPLE} pixels (multiples of {MULTIPLE})"
    )
  return h, w


def frame_indices(total: int, *, start: int = 0, count: int | None = None, stride: int = 1):
  """Indices of `count` frames from `start` every `stride`; a clear error if there are too few."""
  if start < 0 or stride < 1 or (count is not None and count < 1):
    raise ValueError(
      f"bad frame range: start={start} (>= 0), frames={count} (>= 1), stride={stride} (>= 1)"
    )
  available = len(range(start, total, stride))
  if count is None:
    count = available
  if available < count or count < 1:
    raise ValueError(
      f"the driving sequence has {total} frames; start={start}, stride={stride} gives "
      f"{available} frames but {count} were requested"
    )
  return np.arange(start, start + count * stride, stride)


def ref_dict(ref: Poses | dict, width: int, height: int) -> dict:
  """The reference pose dict at the reference size (from keypoints or a dict)."""
  if isinstance(ref, Poses):
    if ref.kp133 is not None:
      kp = map_keypoints(ref.kp133[0], ref.width, ref.height, width, height)
      return pose_lib.from_coco_wholebody(kp, width, height)
    pose = ref.dicts[0]
    if ref.width and ref.height:
      pose = _map_dict(pose, ref.width, ref.height, width, height)
    return as_pose(pose, "reference pose")
  return as_pose(ref, "reference pose")


def driving_dicts(drv: Poses, width: int, height: int) -> list[dict]:
  """Driving poses as dicts normalised to the reference frame (width x height)."""
  if drv.kp133 is not None:
    kp = map_keypoints(drv.kp133, drv.width, drv.height, width, height)
    return [dwpose_from_meta(m) for m in metas_from_kp133(kp, width, height, "driving keypoints")]
  out = []
  for i, p in enumerate(drv.dicts):
    if drv.width and drv.height:
      p = _map_dict(p, drv.width, drv.height, width, height)
    out.append(as_pose(p, f"driving pose {i}"))
  return out


def prepare(
  image: np.ndarray,
  ref: Poses | dict,
  driving: Poses,
  *,
  mode: str = "ref",
  retarget: bool = False,
  anchor: int | None = 0,
  size: tuple[int, int] | None = None,
  max_short: int | None = None,
  face_change: bool = True,
  head_change: bool = False,
  without_face: bool = False,
  drawing: str = "official",
  progress: bool = True,
) -> Prepared:
  """Reference image + reference pose + driving poses -> `Prepared` model inputs.

  Args:
    image: uint8 (H_ref, W_ref, 3) reference image. ref: the reference's pose (keypoints or dict,
    see `Poses`). driving: the driving poses. mode: "ref" (keep the reference layout) or "pose"
    (translate it onto the driving pose). retarget: retarget the driving poses to the reference
    (official retargeting to the reference / official align_to_pose). anchor: driving frame the
    reference is matched to; None picks it (`pick_anchor_frame`). size, max_short: see
    `inference_size`. face_change, head_change, without_face: driving-pose rendering flags (official
    pose rendering). drawing: how every pose is drawn (`pose.render`'s DRAWINGS), as the model
    was trained: "official" for the released checkpoints, "viewing" for the puppet toy.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
    raise ValueError(f"reference image must be uint8 (H,W,3), got {image.dtype}{image.shape}")
  driving.check_usable("driving poses")
  pose_lib.check_drawing(drawing, "prepare")
  if mode not in MODES:
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
  if len(driving) < 1:
    raise ValueError("no driving poses")
  h_ref, w_ref = image.shape[:2]
  hh, ww = inference_size(h_ref, w_ref, max_short=max_short, size=size)
  ref_pose = ref_dict(ref, w_ref, h_ref)
  drv = driving_dicts(driving, w_ref, h_ref)
  if anchor is None:
    anchor = pose_lib.pick_anchor_frame(ref_pose, drv)
  if not 0 <= anchor < len(drv):
    raise ValueError(f"anchor frame {anchor} is outside the {len(drv)} driving frames")

  if mode == "ref":
    image_in = image
    pose_in = pose_lib.render(ref_pose, h_ref, w_ref, without_face=True, drawing=drawing)
    mask = np.zeros((h_ref, w_ref), np.uint8)
    if retarget:
      if not (isinstance(ref, Poses) and ref.kp133 is not None and driving.kp133 is not None):
        raise ValueError(
          "retargeting in 'ref' mode needs COCO-WholeBody keypoints for the reference and the "
          "driving frames (estimated, or a kind 'coco_wholebody' JSON), not pose dicts"
        )
      ref_kp = map_keypoints(ref.kp133[0], ref.width, ref.height, w_ref, h_ref)
      drv_kp = map_keypoints(driving.kp133, driving.width, driving.height, w_ref, h_ref)
      drv = pose_lib.retarget_to_reference(ref_kp, drv_kp, w_ref, h_ref, anchor=anchor)
  else:
    image_in, pose_in, mask, _ = pose_lib.translate_reference(
      image, ref_pose, drv[anchor], drawing=drawing
    )
    if retarget:
      drv = pose_lib.retarget_to_pose(ref_pose, drv, anchor=anchor)

  frames = np.empty((len(drv), hh, ww, 3), np.uint8)
  flags = dict(without_face=without_face, face_change=face_change, head_change=head_change)
  for i, p in enumerate(tqdm(drv, desc="rendering poses", unit="frame", disable=not progress)):
    drawn = pose_lib.render(p, h_ref, w_ref, drawing=drawing, **flags)
    frames[i] = resize_crop(drawn, hh, ww)
  mask_out = resize_crop(mask, hh, ww).astype(np.float32) / 255.0
  return Prepared(
    image=resize_crop(image_in, hh, ww),
    mask=mask_out,
    ref_pose=resize_crop(pose_in, hh, ww),
    poses=frames,
  )


def to_model_range(frames_u8: np.ndarray) -> np.ndarray:
  """uint8 pose drawings -> float32 in [-1, 1]."""
  return np.asarray(frames_u8, np.float32) / 127.5 - 1.0
