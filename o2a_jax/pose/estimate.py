"""Whole-body pose estimation with onnxruntime from local ONNX files (official pose estimator and
keypoint format); nothing is downloaded.

Two pipelines, each a person detector followed by a top-down 133-keypoint COCO-WholeBody model:

- DWPose: YOLOX detector (`yolox_l.onnx`: 640x640 input, top-left letterbox padded with 114, raw
  grid outputs (1, A, 5 + C) decoded with strides 8/16/32, objectness x class score, NMS 0.45,
  score > 0.3) + RTMPose SimCC model (`dw-ll_ucoco_384.onnx`: 288x384 crop of the box padded
  x1.25, mean/std normalised, outputs simcc_x (1,133,2W) / simcc_y (1,133,2H), split ratio 2,
  score = min of the two maxima).
- Wan-Animate (the official inference): YOLO detector (`yolov10m.onnx`: 640x640 centred letterbox,
  pixels / 255, end-to-end outputs (1, N, 6) = x1, y1, x2, y2, score, class, or YOLOv8-style raw
  outputs (1, 4 + C, A) = cx, cy, w, h, class scores, then NMS) with score > 0.05 and NMS IoU 0.5 +
  ViTPose whole-body heat-map model (`vitpose_h_wholebody.onnx`: 192x256 crop of the box padded
  x1.25, ImageNet mean/std on [0, 1] pixels, heat maps (1, 133, 64, 48) decoded with DARK
  (`unbiased`) refinement). As officially, this pipeline feeds the networks BGR-ordered pixels.

The model kinds are recognised from the ONNX output shapes (or forced with `det_kind` /
`pose_kind`). Multiple people: the largest box, or `person=k`, the k-th box from the left.
Keypoints come back as (133, 3) arrays: x, y in pixels of the input image and a score.
"""

from __future__ import annotations

import os
import pathlib

import cv2
import numpy as np
from tqdm import tqdm

DET_KINDS = ("auto", "yolox", "yolo")
POSE_KINDS = ("auto", "simcc", "heatmap")
NUM_KEYPOINTS = 133
_RTM_MEAN = np.array([123.675, 116.28, 103.53], np.float32)
_RTM_STD = np.array([58.395, 57.12, 57.375], np.float32)
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class NoPersonError(ValueError):
  """No person was detected in an image or frame."""


def _session(path, what: str):
  import onnxruntime as ort

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{what} model {str(path)!r} does not exist (give a local .onnx file)")
  try:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
  except Exception as e:
    raise ValueError(f"cannot load {what} model {str(path)!r} with onnxruntime: {e}") from e


def _input_hw(session, default: tuple[int, int]) -> tuple[int, int]:
  shape = session.get_inputs()[0].shape
  h, w = shape[2], shape[3]
  return (h, w) if isinstance(h, int) and isinstance(w, int) else default


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
  """Greedy non-maximum suppression; indices of kept boxes, best first."""
  x1, y1, x2, y2 = boxes.T
  areas = np.maximum(x2 - x1, 0) * np.maximum(y2 - y1, 0)
  order = np.argsort(-scores, kind="stable")
  keep = []
  while order.size:
    i = order[0]
    keep.append(i)
    xx1, yy1 = np.maximum(x1[i], x1[order[1:]]), np.maximum(y1[i], y1[order[1:]])
    xx2, yy2 = np.minimum(x2[i], x2[order[1:]]), np.minimum(y2[i], y2[order[1:]])
    inter = np.maximum(xx2 - xx1, 0) * np.maximum(yy2 - yy1, 0)
    ovr = inter / np.maximum(areas[i] + areas[order[1:]] - inter, 1e-12)
    order = order[1:][ovr <= iou]
  return np.asarray(keep, np.int64)


def yolox_grid_decode(pred: np.ndarray, input_hw: tuple[int, int]) -> np.ndarray:
  """YOLOX raw outputs (A, 5 + C) -> (cx, cy, w, h) in input pixels, strides 8, 16, 32."""
  pred = np.array(pred, np.float32)
  grids, strides = [], []
  for s in (8, 16, 32):
    hs, ws = input_hw[0] // s, input_hw[1] // s
    xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
    grids.append(np.stack([xv, yv], -1).reshape(-1, 2))
    strides.append(np.full((hs * ws, 1), s))
  grid, stride = np.concatenate(grids), np.concatenate(strides)
  if len(grid) != len(pred):
    raise ValueError(
      f"YOLOX output has {len(pred)} anchors; a {input_hw[0]}x{input_hw[1]} input has "
      f"{len(grid)} (strides 8/16/32)"
    )
  pred[:, :2] = (pred[:, :2] + grid) * stride
  pred[:, 2:4] = np.exp(pred[:, 2:4]) * stride
  return pred


def _cxcywh_to_xyxy(b: np.ndarray) -> np.ndarray:
  return np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2,
                   b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], -1)  # fmt: skip


class Detector:
  """Person detector; `detector(image)` -> (boxes (K, 4) x1 y1 x2 y2 in pixels, scores (K,))."""

  def __init__(self, path, *, kind: str = "auto", score_threshold=None, nms_iou=None, bgr=None):
    if kind not in DET_KINDS:
      raise ValueError(f"detector kind must be one of {DET_KINDS}, got {kind!r}")
    self.session = _session(path, "detector")
    self.input_hw = _input_hw(self.session, (640, 640))
    if kind == "auto":  # YOLOX: one row per grid anchor (strides 8, 16, 32); else YOLO
      shape = self.session.get_outputs()[0].shape
      anchors = sum((self.input_hw[0] // s) * (self.input_hw[1] // s) for s in (8, 16, 32))
      kind = "yolox" if len(shape) == 3 and shape[1] == anchors else "yolo"
    self.kind = kind
    yolox = kind == "yolox"
    self.score_threshold = (
      score_threshold if score_threshold is not None else (0.3 if yolox else 0.05)
    )
    self.nms_iou = nms_iou if nms_iou is not None else (0.45 if yolox else 0.5)
    self.bgr = bgr if bgr is not None else not yolox

  def preprocess(self, image: np.ndarray) -> tuple[np.ndarray, float, tuple[float, float]]:
    """Letterbox: (1, 3, h, w) float32 input, the scale and the (x, y) padding offset."""
    ih, iw = self.input_hw
    h, w = image.shape[:2]
    r = min(ih / h, iw / w)
    rnd = round if self.kind == "yolo" else (lambda v: v)  # YOLOX truncates, ultralytics rounds
    nh, nw = int(rnd(h * r)), int(rnd(w * r))
    resized = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
    canvas = np.full((ih, iw, 3), 114, np.uint8)
    if self.kind == "yolox":  # top-left, raw 0..255 pixels
      off = (0.0, 0.0)
    else:  # centred, as ultralytics' LetterBox
      off = ((iw - nw) / 2, (ih - nh) / 2)
    top, left = int(round(off[1] - 0.1)), int(round(off[0] - 0.1))
    canvas[top : top + nh, left : left + nw] = resized
    x = canvas[..., ::-1] if self.bgr else canvas
    x = np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32)
    if self.kind == "yolo":
      x /= 255.0
    return x, r, (float(left), float(top))

  def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, r, (px, py) = self.preprocess(image)
    out = np.asarray(self.session.run(None, {self.session.get_inputs()[0].name: x})[0])
    boxes, scores = self.decode(out)
    boxes = (boxes - np.array([px, py, px, py], np.float32)) / r
    h, w = image.shape[:2]
    boxes = np.clip(boxes, 0, [w, h, w, h]).astype(np.float32)
    return boxes, scores

  def decode(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Raw network output -> person boxes in letterbox pixels and their scores, after NMS."""
    out = np.asarray(out, np.float32)[0]
    if self.kind == "yolox":
      pred = yolox_grid_decode(out, self.input_hw)
      boxes, scores = _cxcywh_to_xyxy(pred[:, :4]), pred[:, 4] * pred[:, 5]  # class 0 = person
    elif out.ndim == 2 and out.shape[1] == 6:  # end-to-end (YOLOv10): x1 y1 x2 y2 score class
      keep = out[:, 5] == 0
      boxes, scores = out[keep, :4], out[keep, 4]
    else:  # YOLOv8-style raw: (4 + C, A) cx cy w h class scores
      boxes, scores = _cxcywh_to_xyxy(out[:4].T), out[4]
    ok = scores > self.score_threshold
    boxes, scores = boxes[ok], scores[ok]
    keep = nms(boxes, scores, self.nms_iou)
    return boxes[keep], scores[keep]


def fix_aspect(scale: np.ndarray, aspect: float) -> np.ndarray:
  """Grows the box (w, h) to the width/height ratio `aspect` (mmpose `_fix_aspect_ratio`)."""
  w, h = float(scale[0]), float(scale[1])
  return np.array([w, w / aspect] if w > h * aspect else [h * aspect, h], np.float32)


def crop_affine(center, size, out_wh) -> np.ndarray:
  """2x3 affine taking the box of `size` (w, h) around `center` onto an out_wh image."""
  sx, sy = out_wh[0] / size[0], out_wh[1] / size[1]
  return np.array(
    [[sx, 0, -sx * (center[0] - size[0] / 2)], [0, sy, -sy * (center[1] - size[1] / 2)]],
    np.float32,
  )


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0):
  """(K, Wx), (K, Wy) SimCC logits -> (K, 2) input-crop pixels and (K,) scores (min of maxima)."""
  x_loc, y_loc = np.argmax(simcc_x, 1), np.argmax(simcc_y, 1)
  score = np.minimum(np.max(simcc_x, 1), np.max(simcc_y, 1))
  locs = np.stack([x_loc, y_loc], -1).astype(np.float32)
  locs[score <= 0] = -1
  return locs / split_ratio, score.astype(np.float32)


def _taylor(hm: np.ndarray, coord: np.ndarray) -> np.ndarray:
  h, w = hm.shape
  px, py = int(coord[0]), int(coord[1])
  if 1 < px < w - 2 and 1 < py < h - 2:
    dx = 0.5 * (hm[py, px + 1] - hm[py, px - 1])
    dy = 0.5 * (hm[py + 1, px] - hm[py - 1, px])
    dxx = 0.25 * (hm[py, px + 2] - 2 * hm[py, px] + hm[py, px - 2])
    dxy = 0.25 * (hm[py + 1, px + 1] - hm[py - 1, px + 1] - hm[py + 1, px - 1] + hm[py - 1, px - 1])
    dyy = 0.25 * (hm[py + 2, px] - 2 * hm[py, px] + hm[py - 2, px])
    det = dxx * dyy - dxy**2
    if det != 0:
      hessian_inv = np.array([[dyy, -dxy], [-dxy, dxx]]) / det
      coord = coord - hessian_inv @ np.array([dx, dy])
  return coord


def heatmap_decode(heatmaps: np.ndarray, *, unbiased: bool = True, kernel: int = 11):
  """(K, h, w) heat maps -> (K, 2) heat-map pixels and (K,) scores (mmpose, DARK when unbiased)."""
  k, h, w = heatmaps.shape
  flat = heatmaps.reshape(k, -1)
  idx = np.argmax(flat, 1)
  scores = flat[np.arange(k), idx].astype(np.float32)
  coords = np.stack([idx % w, idx // w], -1).astype(np.float64)
  if unbiased:
    border = (kernel - 1) // 2
    hm = heatmaps.astype(np.float64).copy()
    for j in range(k):  # Gaussian blur that keeps each map's maximum
      orig_max = hm[j].max()
      padded = np.zeros((h + 2 * border, w + 2 * border))
      padded[border:-border, border:-border] = hm[j]
      blurred = cv2.GaussianBlur(padded, (kernel, kernel), 0)[border:-border, border:-border]
      hm[j] = blurred * (orig_max / max(blurred.max(), 1e-12))
    hm = np.log(np.maximum(hm, 1e-10))
    coords = np.stack([_taylor(hm[j], coords[j]) for j in range(k)])
  else:  # quarter-pixel shift towards the higher neighbour
    for j in range(k):
      px, py = int(coords[j, 0]), int(coords[j, 1])
      if 1 < px < w - 1 and 1 < py < h - 1:
        diff = np.array(
          [heatmaps[j, py, px + 1] - heatmaps[j, py, px - 1],
           heatmaps[j, py + 1, px] - heatmaps[j, py - 1, px]]
        )  # fmt: skip
        coords[j] += np.sign(diff) * 0.25
  coords[scores <= 0] = -1
  return coords.astype(np.float32), scores


class PoseModel:
  """Top-down whole-body keypoints: `model(image, box)` -> (133, 3) x, y pixels and score."""

  def __init__(self, path, *, kind: str = "auto", bgr=None, padding: float = 1.25):
    if kind not in POSE_KINDS:
      raise ValueError(f"pose model kind must be one of {POSE_KINDS}, got {kind!r}")
    self.session = _session(path, "pose")
    outputs = self.session.get_outputs()
    if kind == "auto":
      kind = "simcc" if len(outputs) == 2 else "heatmap"
    self.kind = kind
    default = (384, 288) if kind == "simcc" else (256, 192)
    self.input_hw = _input_hw(self.session, default)
    self.bgr = bgr if bgr is not None else kind == "heatmap"
    self.padding = padding

  def crop(self, image: np.ndarray, box) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The normalised network input (1, 3, h, w), the box centre and its padded (w, h)."""
    ih, iw = self.input_hw
    x1, y1, x2, y2 = (float(v) for v in box)
    center = np.array([(x1 + x2) / 2, (y1 + y2) / 2], np.float32)
    size = fix_aspect(np.array([x2 - x1, y2 - y1]) * self.padding, iw / ih)
    m = crop_affine(center, size, (iw, ih))
    x = cv2.warpAffine(image, m, (iw, ih), flags=cv2.INTER_LINEAR).astype(np.float32)
    if self.bgr:
      x = x[..., ::-1]
    if self.kind == "simcc":
      x = (x - _RTM_MEAN) / _RTM_STD
    else:
      x = (x / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1)[None], np.float32), center, size

  def __call__(self, image: np.ndarray, box) -> np.ndarray:
    x, center, size = self.crop(image, box)
    outs = self.session.run(None, {self.session.get_inputs()[0].name: x})
    return self.decode(outs, center, size)

  def decode(self, outs, center, size) -> np.ndarray:
    """Network outputs -> (133, 3) keypoints in image pixels."""
    ih, iw = self.input_hw
    if self.kind == "simcc":
      locs, scores = simcc_decode(np.asarray(outs[0])[0], np.asarray(outs[1])[0])
      grid = (iw, ih)
    else:
      hm = np.asarray(outs[0])[0]
      locs, scores = heatmap_decode(hm)
      grid = (hm.shape[2], hm.shape[1])
    if locs.shape[0] != NUM_KEYPOINTS:
      raise ValueError(
        f"the pose model returns {locs.shape[0]} keypoints; a COCO-WholeBody model returns "
        f"{NUM_KEYPOINTS}"
      )
    xy = locs / np.array(grid, np.float32) * size + center - size / 2
    return np.concatenate([xy, scores[:, None]], -1).astype(np.float64)


class PoseEstimator:
  """Detector + pose model: `estimate(image)` -> (133, 3) COCO-WholeBody keypoints (pixels)."""

  def __init__(
    self,
    det_model: str | os.PathLike,
    pose_model: str | os.PathLike,
    *,
    det_kind: str = "auto",
    pose_kind: str = "auto",
    person: int | None = None,
  ):
    self.detector = Detector(det_model, kind=det_kind)
    self.pose = PoseModel(pose_model, kind=pose_kind)
    if person is not None and person < 0:
      raise ValueError(f"--person must be >= 0, got {person}")
    self.person = person

  def pick(self, boxes: np.ndarray, what: str) -> np.ndarray:
    """The largest box, or the `person`-th from the left."""
    if len(boxes) == 0:
      raise NoPersonError(f"no person found in {what}")
    if self.person is None:
      area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
      return boxes[int(np.argmax(area))]
    order = np.argsort((boxes[:, 0] + boxes[:, 2]) / 2, kind="stable")
    if self.person >= len(boxes):
      raise ValueError(
        f"--person {self.person}: only {len(boxes)} people found in {what} (indices count from "
        "0, left to right)"
      )
    return boxes[order[self.person]]

  def estimate(self, image: np.ndarray, what: str = "the image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
      raise ValueError(
        f"{what}: expected a uint8 RGB image (H,W,3), got {image.dtype}{image.shape}"
      )
    boxes, _ = self.detector(image)
    return self.pose(image, self.pick(boxes, what))

  def estimate_video(self, frames, *, what: str = "the video", progress: bool = True) -> np.ndarray:
    """(N, H, W, 3) uint8 frames -> (N, 133, 3) keypoints; no person in a frame is an error."""
    out = [
      self.estimate(f, f"frame {i} of {what}")
      for i, f in enumerate(
        tqdm(frames, desc="estimating poses", unit="frame", disable=not progress)
      )
    ]
    return np.stack(out)
