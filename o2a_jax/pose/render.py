"""Pose rendering: the official `draw_pose_aligned` (official pose rendering), pixel-identical with
OpenCV.

The skeleton is drawn on a large canvas (short side 2160 px) and resized bilinearly to the frame
size. Every rounding step of the official code is kept as is (`int()` truncation of coordinates,
lengths, angles and colours, the uint8 truncation after dimming the limbs by 0.6), because the model
was trained on exactly these images. The one departure is opt-in (`drawing="viewing"`): the same
drawing on a canvas twice the frame, area-averaged, for frames of a few dozen pixels where the
official resize leaves broken dots (pictures for people, and the puppet toy's model input).
"""

from __future__ import annotations

import colorsys
import math

import cv2
import numpy as np

from o2a_jax.pose.schema import as_pose

_CANVAS_SHORT_SIDE = 2160
# How a pose is drawn and brought to the frame size (`render`'s `drawing`).
DRAWINGS = ("official", "viewing")
# Coordinates at or below this (in pixels) mark "not detected" for hands and face (DWPose writes -1
# there).
_EPS = 0.01
_DRAW_THRESHOLD = 0.3

# OpenPose limbs (1-based joint pairs); only the first 17 are drawn (the last two, shoulder-ear,
# never are).
LIMBS = (
  (2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
  (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18),
)  # fmt: skip
_DRAWN_LIMBS = 17
COLORS = (
  (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
  (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
  (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)  # fmt: skip
HAND_EDGES = (
  (0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11),
  (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20),
)  # fmt: skip
# Face landmarks never drawn: the jaw line (0-16) and the nose (27-35).
_FACE_SKIPPED = frozenset(range(0, 17)) | frozenset(range(27, 36))
# Joints dimmed by head_change: nose, eyes, ears.
_HEAD_JOINTS = (0, 14, 15, 16, 17)
# A score of -2 marks a dimmed joint: its limbs get the constant alpha, the joint itself is drawn
# black.
_DIMMED = -2


_DIM_LUT = (np.arange(256) * 0.6).astype(np.uint8)  # x -> uint8(float64(x) * 0.6)


def stick_width(width: int, height: int, base: int) -> int:
  """The official line width for a canvas of this size (`get_stickwidth`, DU:36-51)."""
  side = max(width, height)
  if side < 512:
    ratio = 1.0
  elif side < 1080:
    ratio = 1.5
  elif side < 2160:
    ratio = 2.0
  elif side < 3240:
    ratio = 2.5
  elif side < 4320:
    ratio = 3.5
  elif side < 5400:
    ratio = 4.5
  else:  # the official table really drops back to 4.0 here
    ratio = 4.0
  return int(base * ratio)


def _blend(color, alpha) -> list[int]:
  return [int(c * alpha) for c in color]


def _draw_body(canvas: np.ndarray, candidate, subset, score) -> np.ndarray:
  H, W = canvas.shape[:2]
  stick = stick_width(W, H, 3)
  for i in range(_DRAWN_LIMBS):
    pair = np.array(LIMBS[i]) - 1
    for n in range(len(subset)):
      index = subset[n][pair]
      conf = score[n][pair]
      if -1 in index:
        continue
      # Low-confidence (or dimmed) limbs keep a constant faint colour instead of disappearing.
      alpha = max(conf[0] * conf[1], 0) if conf[0] > 0 and conf[1] > 0 else 0.35
      xs = candidate[index.astype(int), 0] * float(W)
      ys = candidate[index.astype(int), 1] * float(H)
      length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
      angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
      polygon = cv2.ellipse2Poly(
        (int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), stick), int(angle), 0, 360, 1
      )
      cv2.fillConvexPoly(canvas, polygon, _blend(COLORS[i], alpha))

  # Limbs are dimmed before the joints are drawn on top: the official float64 product truncated
  # back to uint8, as a 256-entry lookup table (bit-identical, ~4x faster on 2160p canvases).
  canvas = cv2.LUT(canvas, _DIM_LUT)

  for i in range(18):
    for n in range(len(subset)):
      index = int(subset[n][i])
      if index == -1:
        continue
      x, y = candidate[index][0:2]
      conf = score[n][i]
      alpha = 0 if conf == _DIMMED else max(conf, 0)
      cv2.circle(canvas, (int(x * W), int(y * H)), stick, _blend(COLORS[i], alpha), thickness=-1)
  return canvas


def _hand_edge_color(edge: int, strength: int) -> tuple[float, float, float]:
  # The official colour is matplotlib's hsv_to_rgb (same arithmetic as colorsys) times an int
  # strength, passed to OpenCV as floats; OpenCV rounds them itself, so they are passed unrounded
  # here too.
  rgb = colorsys.hsv_to_rgb(edge / float(len(HAND_EDGES)), 1.0, 1.0)
  return tuple(float(c * strength) for c in rgb)


def _draw_hands(canvas: np.ndarray, hands, hands_score) -> np.ndarray:
  H, W = canvas.shape[:2]
  stick = stick_width(W, H, 2)
  for peaks, scores in zip(hands, hands_score):
    for ie, (a, b) in enumerate(HAND_EDGES):
      if scores[a] < _DRAW_THRESHOLD or scores[b] < _DRAW_THRESHOLD:
        continue
      x1, y1 = int(peaks[a][0] * W), int(peaks[a][1] * H)
      x2, y2 = int(peaks[b][0] * W), int(peaks[b][1] * H)
      strength = int(scores[a] * scores[b] * 255)
      if x1 > _EPS and y1 > _EPS and x2 > _EPS and y2 > _EPS:
        cv2.line(canvas, (x1, y1), (x2, y2), _hand_edge_color(ie, strength), thickness=stick)
    for i, (x, y) in enumerate(peaks):
      if scores[i] < _DRAW_THRESHOLD:
        continue
      x, y = int(x * W), int(y * H)
      if x > _EPS and y > _EPS:
        # (0, 0, v) is blue in the RGB canvas.
        cv2.circle(canvas, (x, y), stick, (0, 0, int(scores[i] * 255)), thickness=-1)
  return canvas


def _draw_face(canvas: np.ndarray, faces, faces_score, face_change: bool) -> np.ndarray:
  H, W = canvas.shape[:2]
  stick = stick_width(W, H, 2)
  for landmarks, scores in zip(faces, faces_score):
    for idx, ((x, y), s) in enumerate(zip(landmarks, scores)):
      if idx in _FACE_SKIPPED or s < _DRAW_THRESHOLD:
        continue
      x, y = int(x * W), int(y * H)
      value = int(s * 255)
      if face_change:
        value = int(value * 0.35)
      if x > _EPS and y > _EPS:
        cv2.circle(canvas, (x, y), stick, (value, value, value), thickness=-1)
  return canvas


def render(
  pose,
  height: int,
  width: int,
  *,
  without_face: bool = False,
  face_change: bool = False,
  head_change: bool = False,
  drawing: str = "official",
) -> np.ndarray:
  """Draws a pose as the official `draw_pose_aligned` does; uint8 (height, width, 3) RGB.

  Args:
    pose: pose dict (see `o2a_jax.pose.schema`); a pose with no detected joint renders black, as
      officially.
    height, width: output frame size in pixels.
    without_face: skip the face landmarks (the reference pose at inference is drawn this way).
    face_change: draw the face landmarks at 35 % brightness (the "lighter face" signal).
    head_change: dim the head joints (nose, eyes, ears): their limbs get a constant faint colour
      and the joints are drawn black.
    drawing: one of `DRAWINGS`: the drawing canvas and the resize down to the frame.
      "official" (what the released checkpoints saw): a canvas of short side 2160 resized
      bilinearly; at a few dozen pixels that leaves broken dots and bars (a 10-px line shrunk
      34x bilinearly keeps about 1 % of its pixels). "viewing": a canvas twice the frame
      (at least 64 px) area-averaged, continuous at any size: the pictures meant for people,
      and the model input of the small puppet toy (`configs/o2a.py:puppet`, `data.pose_drawing`).
  """
  height, width = int(height), int(width)
  if height <= 0 or width <= 0:
    raise ValueError(f"render: height and width must be positive, got {height}x{width}")
  p = as_pose(pose)
  score = p["bodies"]["score"].copy()
  if head_change:
    score[:, list(_HEAD_JOINTS)] = _DIMMED

  canvas_short_side, interpolation = _canvas(drawing, height, width)
  short = min(height, width)
  ratio = (canvas_short_side / short) if short != canvas_short_side else 1
  canvas = np.zeros((int(height * ratio), int(width * ratio), 3), dtype=np.uint8)
  canvas = _draw_body(canvas, p["bodies"]["candidate"], p["bodies"]["subset"], score)
  canvas = _draw_hands(canvas, p["hands"], p["hands_score"])
  if not without_face and p["faces"] is not None:
    canvas = _draw_face(canvas, p["faces"], p["faces_score"], face_change)
  return cv2.resize(canvas, (width, height), interpolation=interpolation)


def viewing(pose, height: int, width: int) -> np.ndarray:
  """A pose drawn to be looked at, uint8 (height, width, 3): `render` with drawing "viewing"."""
  return render(pose, height, width, drawing="viewing")


def check_drawing(drawing: str, where: str = "pose drawing") -> str:
  """`drawing` if it is one of `DRAWINGS`, else a ValueError naming `where`."""
  if drawing not in DRAWINGS:
    raise ValueError(f"{where}: unknown pose drawing {drawing!r}; choose one of {DRAWINGS}")
  return drawing


def _canvas(drawing: str, height: int, width: int) -> tuple[int, int]:
  """(canvas short side, cv2 interpolation of the resize to the frame) of a drawing."""
  if check_drawing(drawing, "render") == "official":
    return _CANVAS_SHORT_SIDE, cv2.INTER_LINEAR
  # Twice the frame keeps the official width table's proportions (about 3 px lines at 256 px).
  return max(2 * min(height, width), 64), cv2.INTER_AREA
