"""A tiny random training dataset for tests and smoke runs (no real data needed).

    from data_pipeline import synthetic
    synthetic.write_dataset(tmp_path / "data", clips=4, pairs=3, pool=4)

Clips show a coloured figure moving slowly on a smooth background, with DWPose-style poses that
follow it (18 body joints, 2 hands, 68 face landmarks, all scores 0.9), some text boxes, and JPEG
frames; image pairs are two frames of one such figure; pool records are raw DWPose output of random
figures. Pixel values stay in [20, 235] so that masked (zeroed) regions are unambiguous.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

from data_pipeline.records import DatasetWriter, encode_image, pack_pose

# Body joints in OpenPose order, in units of the figure height, relative to the hip centre.
_BODY = np.array([
  (0.0, -0.90), (0.0, -0.72), (-0.18, -0.70), (-0.28, -0.42), (-0.30, -0.16), (0.18, -0.70),
  (0.28, -0.42), (0.30, -0.16), (-0.10, -0.02), (-0.11, 0.36), (-0.12, 0.76), (0.10, -0.02),
  (0.11, 0.36), (0.12, 0.76), (-0.035, -0.94), (0.035, -0.94), (-0.075, -0.92), (0.075, -0.92),
])  # fmt: skip


def _face_template() -> np.ndarray:
  """68 landmarks in units of the face half-width, centred on the nose tip."""
  pts = np.zeros((68, 2))
  x = np.linspace(-1, 1, 17)
  pts[0:17] = np.c_[x, 0.2 + 0.9 * np.sqrt(1 - 0.9 * x**2)]  # jaw
  pts[17:22] = np.c_[np.linspace(-0.8, -0.2, 5), -0.75 - 0.1 * np.sin(np.linspace(0, np.pi, 5))]
  pts[22:27] = np.c_[np.linspace(0.2, 0.8, 5), -0.75 - 0.1 * np.sin(np.linspace(0, np.pi, 5))]
  pts[27:31] = np.c_[np.zeros(4), np.linspace(-0.5, 0.0, 4)]  # nose bridge, 30 = tip
  pts[31:36] = np.c_[np.linspace(-0.25, 0.25, 5), np.full(5, 0.1)]
  ring = np.linspace(0, 2 * np.pi, 6, endpoint=False)
  pts[36:42] = np.c_[-0.45 + 0.2 * np.cos(ring), -0.45 + 0.08 * np.sin(ring)]
  pts[42:48] = np.c_[0.45 + 0.2 * np.cos(ring), -0.45 + 0.08 * np.sin(ring)]
  ring = np.linspace(0, 2 * np.pi, 12, endpoint=False)
  pts[48:60] = np.c_[0.4 * np.cos(ring + np.pi), 0.45 + 0.15 * np.sin(ring + np.pi)]
  ring = np.linspace(0, 2 * np.pi, 8, endpoint=False)
  pts[60:68] = np.c_[0.3 * np.cos(ring + np.pi), 0.45 + 0.07 * np.sin(ring + np.pi)]
  return pts


_FACE = _face_template()


def _hand(wrist: np.ndarray, size: float, angle: float) -> np.ndarray:
  pts = [wrist]
  for f in range(5):
    a = angle + (f - 2) * 0.35
    for k in range(1, 5):
      pts.append(wrist + size * k / 4 * np.array([np.sin(a), np.cos(a)]))
  return np.array(pts)


def figure_pixels(cx: float, cy: float, height: float, phase: float = 0.0):
  """(body (18,2), face (68,2), hands (2,21,2)) pixel coordinates of a figure."""
  body = _BODY * height + [cx, cy]
  body[[3, 4, 6, 7], 1] += height * 0.05 * np.sin(phase + np.array([0, 0.5, 1, 1.5]))
  face = body[0] + _FACE * (0.06 * height) + [0, -0.005 * height]
  hands = np.stack([_hand(body[7], 0.08 * height, 0.2), _hand(body[4], 0.08 * height, -0.2)])
  return body, face, hands


def pose_dict(body, face, hands, h: int, w: int, score: float = 0.9) -> dict:
  """Pixel coordinates -> DWPose-style dict (normalised), hands [left, right]."""
  norm = np.array([w, h], dtype=np.float64)
  return {
    "bodies": {
      "candidate": body / norm,
      "subset": np.arange(18, dtype=np.float64)[None],
      "score": np.full((1, 18), score),
    },
    "hands": hands / norm,
    "hands_score": np.full((2, 21), score),
    "faces": (face / norm)[None],
    "faces_score": np.full((1, 68), score),
  }


def raw_dwpose(body, face, hands, score: float = 0.9) -> dict:
  """Pixel coordinates -> raw DWPose output {candidate (1,134,2), score (1,134)}."""
  cand = np.zeros((134, 2))
  cand[:18], cand[18:24] = body, body[[13] * 3 + [10] * 3]
  cand[24:92], cand[92:113], cand[113:134] = face, hands[0], hands[1]
  return {"candidate": cand[None], "score": np.full((1, 134), score)}


def draw_frame(rng_img: np.ndarray, body, face, h: int, w: int) -> np.ndarray:
  """Background plus a crude figure (uint8 RGB, values in [20, 235])."""
  img = rng_img.copy()
  pts = body.astype(np.int32)
  for a, b in ((1, 2), (1, 5), (2, 4), (5, 7), (1, 8), (1, 11), (8, 10), (11, 13)):
    cv2.line(img, tuple(pts[a]), tuple(pts[b]), (200, 60, 60), max(2, h // 40))
  cv2.circle(img, tuple(pts[0]), max(3, int(np.ptp(face[:, 0]) * 0.6)), (220, 180, 150), -1)
  return np.clip(img, 20, 235).astype(np.uint8)


def _background(rng, h: int, w: int) -> np.ndarray:
  small = rng.uniform(40, 215, (4, 4, 3)).astype(np.float32)
  return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC).clip(20, 235).astype(np.uint8)


def write_dataset(
  out_dir,
  *,
  clips: int = 4,
  pairs: int = 3,
  pool: int = 4,
  height: int = 96,
  width: int = 128,
  frames: int = 40,
  fps: float = 16.0,
  corrupt: int = 0,
  seed: int = 0,
  records_per_shard: int = 2,
  overwrite: bool = False,
) -> dict:
  """Writes a random dataset folder; returns its `dataset_info`.

  `corrupt` extra clips have undecodable frame bytes (valid records otherwise) to exercise the
  skip path. Sizes alternate between (height, width) and (width, height) to fill two aspects.
  """
  rng = np.random.default_rng(seed)
  out = pathlib.Path(out_dir)
  writer = DatasetWriter(out, records_per_shard=records_per_shard, overwrite=overwrite)
  for c in range(clips + corrupt):
    h, w = (height, width) if c % 2 == 0 else (width, height)
    bg = _background(rng, h, w)
    fig_h = 0.5 * h
    cx0, cy = rng.uniform(0.35, 0.65) * w, 0.55 * h
    enc, poses, ocr = [], [], []
    for t in range(frames):
      cx = cx0 + 0.05 * w * np.sin(t / 6)
      body, face, hands = figure_pixels(cx, cy, fig_h, phase=t / 3)
      poses.append(pack_pose(pose_dict(body, face, hands, h, w)))
      enc.append(b"not an image" if c >= clips else encode_image(draw_frame(bg, body, face, h, w)))
      ocr.append([[2, 2, w // 4, h // 10]] if t % 3 == 0 else [])
    writer.add({
      "kind": "clip", "id": f"clip{c:03d}", "fps": float(fps), "height": h, "width": w,
      "frames": enc, "poses": poses, "start_frame": 0, "end_frame": frames,
      "refimg_index": None, "train_start_index": None, "ocr_boxes": ocr, "caption": "",
    })  # fmt: skip
  for p in range(pairs):
    h, w = height, width
    bg = _background(rng, h, w)
    figs = [figure_pixels(rng.uniform(0.4, 0.6) * w, 0.55 * h, 0.5 * h, phase=k) for k in (0, 2)]
    same = p == 0
    imgs = [encode_image(draw_frame(bg, b, f, h, w)) for b, f, _ in figs]
    writer.add({
      "kind": "pair", "id": f"pair{p:03d}", "height": h, "width": w,
      "source": imgs[0], "target": imgs[0] if same else imgs[1],
      "source_pose": pack_pose(pose_dict(*figs[0], h, w)),
      "target_pose": pack_pose(pose_dict(*(figs[0] if same else figs[1]), h, w)),
      "same": same, "caption": "",
    })  # fmt: skip
  for q in range(pool):
    h, w = (int(height * 1.5), width) if q % 2 else (height, int(width * 1.5))
    fig = figure_pixels(w / 2, 0.55 * h, rng.uniform(0.45, 0.55) * h, phase=rng.uniform(0, 6))
    # Perturb the head proportions so that the pool differs from the clips' figures.
    body, face, hands = fig
    face = face[30] + (face - face[30]) * rng.uniform(0.7, 1.4, 2)
    raw = raw_dwpose(body, face, hands)
    writer.add({"kind": "pool", "id": f"pool{q:03d}", "height": h, "width": w,
                "candidate": raw["candidate"], "score": raw["score"]})  # fmt: skip
  return writer.close({"source": "synthetic", "seed": seed})
