"""Building training datasets (`o2a data build`): official layout or video folders -> records.

Sources:
- `build_official(csv)`: the official combined CSV (official training data layout): video rows
  (`path`, `pose_path`, `fps`, `start_frame`, `end_frame`, `all_ocr_bbox`, `train_start_index`,
  `refimg_index`, ...) and image-group rows (`img_pairs` = list of {src_path, tgt_path,
  tgt_pose_path, ...}; the source pose is `<src stem>_pose.npy`). Optionally a pose-pool CSV
  (`pose_path, height, width`; the raw DWPose output is read from `pose_path` with `.npy` ->
  `_raw.npy`). Relative paths are resolved against `root` (default: the CSV's folder). List cells
  are Python/JSON literals.
- `build_videos(folder)`: every video (or frame folder) with a pose file next to it:
  `<stem>_pose.npy` (official per-frame dicts) or `<stem>_pose.json` / `<stem>.json` (o2a-pose JSON,
  kind dwpose or coco_wholebody). With `estimate=True`, videos without pose files are run through
  `o2a_jax.pose.estimate.PoseEstimator` (local detector + whole-body ONNX models, e.g. DWPose's
  yolox_l + dw-ll_ucoco_384) and converted with `from_coco_wholebody`.

Inputs that cannot be read or are inconsistent are reported (one line each) and skipped, never
written; the returned summary counts written and skipped items. Frames are stored as JPEG (quality
95) or PNG, optionally downscaled so that the short side is at most `max_short_side`.
"""

from __future__ import annotations

import ast
import csv
import json
import pathlib
import sys

import cv2
import numpy as np
from tqdm import tqdm

from data_pipeline.records import DatasetWriter, encode_image, pack_pose
from o2a_jax.io import video as video_io
from o2a_jax.pose import as_pose, from_coco_wholebody, read_official_npy

VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".gif")


class _Report:
  def __init__(self, quiet: bool):
    self.quiet = quiet
    self.skipped: list[str] = []

  def skip(self, what: str, why) -> None:
    self.skipped.append(f"{what}: {why}")
    if not self.quiet:
      tqdm.write(f"skipped {what}: {why}", file=sys.stderr)


def _literal(cell, what: str):
  if cell is None:
    return None
  cell = cell.strip()
  if not cell or cell.lower() in ("nan", "none", "[]"):
    return None
  try:
    return json.loads(cell)
  except json.JSONDecodeError:
    try:
      return ast.literal_eval(cell)
    except (ValueError, SyntaxError) as e:
      raise ValueError(f"{what}: cannot parse {cell[:60]!r} ({e})") from e


def _downscale(frames: np.ndarray, max_short_side: int) -> tuple[np.ndarray, float]:
  h, w = frames.shape[1:3]
  if not max_short_side or min(h, w) <= max_short_side:
    return frames, 1.0
  s = max_short_side / min(h, w)
  size = (max(1, int(round(w * s))), max(1, int(round(h * s))))
  return np.stack([cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames]), s


def clip_record(
  cid: str, frames: np.ndarray, poses: list, fps: float, *, start=0, end=None, ocr=None,
  refimg_index=None, train_start_index=None, caption="", image_format="jpeg", max_short_side=0,
) -> dict:  # fmt: skip
  """Decoded frames + per-frame pose dicts -> a clip record (validated)."""
  if len(poses) < len(frames):
    raise ValueError(f"{len(poses)} poses for {len(frames)} frames")
  if not fps or fps <= 0:
    raise ValueError(f"bad fps {fps!r}")
  frames, s = _downscale(frames, max_short_side)
  n = len(frames)
  end = n if end is None else min(int(end), n)
  start = max(0, int(start))
  if end - start < 1:
    raise ValueError(f"empty training window [{start}, {end}) of {n} frames")
  boxes = None
  if ocr is not None:
    boxes = [
      [(np.asarray(b, np.float64) * s).tolist() for b in (ocr[i] if i < len(ocr) else []) or []]
      for i in range(n)
    ]
  checked = [pack_pose(as_pose(p, f"pose[{i}]")) for i, p in enumerate(poses[:n])]
  return {
    "kind": "clip", "id": cid, "fps": float(fps), "height": int(frames.shape[1]),
    "width": int(frames.shape[2]), "frames": [encode_image(f, image_format) for f in frames],
    "poses": checked, "start_frame": start, "end_frame": end,
    "refimg_index": [int(i) for i in refimg_index] if refimg_index else None,
    "train_start_index": [int(i) for i in train_start_index] if train_start_index else None,
    "ocr_boxes": boxes, "caption": caption or "",
  }  # fmt: skip


def _first_pose(path: pathlib.Path) -> dict:
  poses = read_official_npy(path)
  if "bodies" not in poses[0]:
    raise ValueError(f"{path}: holds raw DWPose output, not pose dicts")
  return poses[0]


def _resolve(root: pathlib.Path, p: str) -> pathlib.Path:
  q = pathlib.Path(p)
  return q if q.is_absolute() else root / q


def build_official(
  csv_path, out_dir, *, root=None, pose_pool_csv=None, image_format="jpeg", max_frames=0,
  max_short_side=0, records_per_shard=64, overwrite=False, quiet=False,
) -> dict:  # fmt: skip
  """The official combined CSV (and optional pose-pool CSV) -> a dataset folder."""
  csv_path = pathlib.Path(csv_path)
  if not csv_path.is_file():
    raise FileNotFoundError(f"CSV {str(csv_path)!r} does not exist")
  root = pathlib.Path(root) if root else csv_path.parent
  with open(csv_path, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  if rows and "path" not in rows[0]:
    raise ValueError(f"{csv_path}: no 'path' column; is this the official combined CSV?")
  writer = DatasetWriter(out_dir, records_per_shard=records_per_shard, overwrite=overwrite)
  rep = _Report(quiet)
  for r, row in enumerate(tqdm(rows, desc="rows", unit="row", disable=quiet)):
    pairs = _literal(row.get("img_pairs"), f"row {r} img_pairs") if row.get("img_pairs") else None
    if pairs:
      for k, pair in enumerate(pairs):
        what = f"row {r} pair {k}"
        try:
          src, tgt = _resolve(root, pair["src_path"]), _resolve(root, pair["tgt_path"])
          src_img = video_io.read_image(src)
          tgt_img = src_img if src == tgt else video_io.read_image(tgt)
          src_pose = _first_pose(src.with_name(src.stem + "_pose.npy"))
          tgt_pose = _first_pose(_resolve(root, pair["tgt_pose_path"]))
          writer.add({
            "kind": "pair", "id": f"{row['path']}/{k}", "height": int(tgt_img.shape[0]),
            "width": int(tgt_img.shape[1]), "source": encode_image(src_img, image_format),
            "target": encode_image(tgt_img, image_format),
            "source_pose": pack_pose(as_pose(src_pose)),
            "target_pose": pack_pose(as_pose(tgt_pose)),
            "same": bool(src == tgt),
            "caption": str(pair.get("qwen_caption") or pair.get("text") or ""),
          })  # fmt: skip
        except (ValueError, OSError, KeyError, TypeError) as e:
          rep.skip(what, e)
      continue
    what = f"row {r} ({row.get('path')})"
    try:
      path = _resolve(root, row["path"])
      frames, fps_file = video_io.read_video(path, max_frames=max_frames or None)
      poses = read_official_npy(_resolve(root, row["pose_path"]))
      fps = float(row.get("fps") or fps_file)
      n = min(len(frames), len(poses))
      rec = clip_record(
        row["path"], frames[:n], poses[:n], fps,
        start=int(float(row.get("start_frame") or 0)),
        end=int(float(row["end_frame"])) if row.get("end_frame") else None,
        ocr=_literal(row.get("all_ocr_bbox"), "all_ocr_bbox"),
        refimg_index=_literal(row.get("refimg_index"), "refimg_index"),
        train_start_index=_literal(row.get("train_start_index"), "train_start_index"),
        caption=row.get("qwen_caption", ""), image_format=image_format,
        max_short_side=max_short_side,
      )  # fmt: skip
      writer.add(rec)
    except (ValueError, OSError, KeyError, TypeError) as e:
      rep.skip(what, e)
  pools = [pose_pool_csv] if isinstance(pose_pool_csv, str | pathlib.Path) else pose_pool_csv
  for pool_csv in pools or ():  # official pools A (H/W >= 1) and B; the loader picks by aspect
    _add_pool(writer, pathlib.Path(pool_csv), rep, quiet)
  return _finish(writer, rep, {"source": "official", "csv": str(csv_path)}, quiet)


def _add_pool(writer, pool_csv: pathlib.Path, rep: _Report, quiet: bool) -> None:
  if not pool_csv.is_file():
    raise FileNotFoundError(f"pose pool CSV {str(pool_csv)!r} does not exist")
  with open(pool_csv, newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  root = pool_csv.parent
  for r, row in enumerate(tqdm(rows, desc="pose pool", unit="pose", disable=quiet)):
    try:
      raw_path = _resolve(root, row["pose_path"].replace(".npy", "_raw.npy"))
      for k, raw in enumerate(read_official_npy(raw_path)):
        cand = np.asarray(raw["candidate"], np.float64)
        score = np.asarray(raw["score"], np.float64)
        if cand.ndim != 3 or cand.shape[1:] != (134, 2) or score.shape != cand.shape[:2]:
          raise ValueError(f"raw pose {k} has shapes {cand.shape}, {score.shape}")
        writer.add({"kind": "pool", "id": f"{row['pose_path']}/{k}",
                    "height": int(float(row["height"])), "width": int(float(row["width"])),
                    "candidate": cand, "score": score})  # fmt: skip
    except (ValueError, OSError, KeyError, TypeError) as e:
      rep.skip(f"pose pool row {r}", e)


def _poses_for(video: pathlib.Path, width: int, height: int):
  stem = video.with_suffix("") if video.is_file() else video
  npy = stem.with_name(stem.name + "_pose.npy")
  if npy.is_file():
    return read_official_npy(npy)
  for js in (stem.with_name(stem.name + "_pose.json"), stem.with_name(stem.name + ".json")):
    if js.is_file():
      from o2a_jax.pose import read_keypoints_json, read_poses_json

      doc = json.loads(js.read_text(encoding="utf-8"))
      if doc.get("kind") == "coco_wholebody":
        kp, w, h = read_keypoints_json(js)
        return [from_coco_wholebody(k, w, h) for k in kp]
      return read_poses_json(js)[0]
  return None


def build_videos(
  folder, out_dir, *, estimate=False, det_model=None, pose_model=None, image_format="jpeg",
  max_frames=0, max_short_side=0, records_per_shard=64, overwrite=False, quiet=False,
) -> dict:  # fmt: skip
  """A folder of videos (or frame folders) with pose files -> a dataset folder."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"video folder {str(folder)!r} does not exist")
  items = sorted(
    p
    for p in folder.iterdir()
    if (p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES) or (p.is_dir() and any(p.iterdir()))
  )
  if not items:
    raise ValueError(f"{folder} holds no videos ({', '.join(VIDEO_SUFFIXES)}) or frame folders")
  estimator = _estimator(det_model, pose_model) if estimate else None
  writer = DatasetWriter(out_dir, records_per_shard=records_per_shard, overwrite=overwrite)
  rep = _Report(quiet)
  for item in tqdm(items, desc="videos", unit="video", disable=quiet):
    try:
      frames, fps = video_io.read_video(item, max_frames=max_frames or None)
      poses = _poses_for(item, frames.shape[2], frames.shape[1])
      if poses is None:
        if estimator is None:
          raise ValueError("no pose file (<stem>_pose.npy, <stem>_pose.json or <stem>.json)")
        poses = estimator(frames)
      n = min(len(frames), len(poses))
      writer.add(clip_record(item.name, frames[:n], poses[:n], fps, image_format=image_format,
                             max_short_side=max_short_side))  # fmt: skip
    except (ValueError, OSError, KeyError, TypeError) as e:
      rep.skip(item.name, e)
  return _finish(writer, rep, {"source": "videos", "folder": str(folder)}, quiet)


def _estimator(det_model, pose_model):
  """frames -> pose dicts via `o2a_jax.pose.estimate.PoseEstimator` (local ONNX files).

  Keypoints are converted with `from_coco_wholebody` (the inference conversion); a frame without a
  person makes the whole video fail (reported and skipped).
  """
  if not det_model or not pose_model:
    raise ValueError("--estimate needs --det-model and --pose-model (local ONNX files)")
  try:
    from o2a_jax.pose.estimate import PoseEstimator
  except ImportError as e:
    raise ValueError(
      f"pose estimation is not available in this installation ({e}); install onnxruntime or "
      "provide pose files next to the videos"
    ) from e
  est = PoseEstimator(det_model, pose_model)

  def run(frames):
    h, w = frames.shape[1:3]
    kp = est.estimate_video(frames, progress=False)
    return [from_coco_wholebody(k, w, h) for k in kp]

  return run


def _finish(writer: DatasetWriter, rep: _Report, summary: dict, quiet: bool) -> dict:
  if writer.counts["clip"] + writer.counts["pair"] == 0:
    writer.abort()
    first = "; ".join(str(x) for x in rep.skipped[:3])
    source = summary.get("csv") or summary.get("folder")
    raise ValueError(
      f"no usable clip or image pair in {source} ({len(rep.skipped)} skipped"
      + (f": {first}" if first else "")
      + f"); nothing was written to {writer.dir}"
    )
  summary = dict(summary, skipped=len(rep.skipped), skipped_items=rep.skipped[:1000])
  info = writer.close(summary)
  if not quiet:
    c = info["counts"]
    print(
      f"wrote {c['clip']} clips, {c['pair']} image pairs, {c['pool']} pool poses to "
      f"{writer.dir}; skipped {len(rep.skipped)} unreadable or inconsistent inputs"
    )
  return info
