"""One training sample from one record: frame sampling (official frame sampling), augmentations
(official training recipe), pose rendering, crop/resize to the bucket size and normalisation.

`video_sample` / `pair_sample` are pure functions of (record, numpy Generator, config, bucket);
they return the per-sample fields of `data_pipeline.batch` (no batch axis) and an `info` dict that
records every random decision (for tests and debugging). Corrupt content raises
`CorruptRecordError`.
"""

from __future__ import annotations

import numpy as np

from data_pipeline import augment as A
from data_pipeline import buckets
from data_pipeline.face_enhance import enhance, pool_pose
from data_pipeline.records import CorruptRecordError, decode_image, unpack_pose
from o2a_jax.pose import as_pose, render


def clip_window(rec_or_meta, cfg) -> tuple[int, int]:
  """(start, end) stored-frame window after `--one_more_second` (official: +2 s, official bug: int
  vs round frame stride).
  """
  fps = float(rec_or_meta["fps"])
  start, end = int(rec_or_meta["start_frame"]), int(rec_or_meta["end_frame"])
  n = int(rec_or_meta["n_frames"]) if "n_frames" in rec_or_meta else len(rec_or_meta["frames"])
  if cfg.one_more_second:
    end += int((2 if cfg.reproduce_official else 1) * fps)
  return start, min(end, n)


def candidate_frames(rec_or_meta, cfg) -> np.ndarray:
  start, end = clip_window(rec_or_meta, cfg)
  stride = buckets.frame_stride(
    float(rec_or_meta["fps"]), cfg.train_fps, eligibility=False,
    reproduce_official=cfg.reproduce_official,
  )  # fmt: skip
  return np.arange(start + 1, end - 1, stride)


def sample_frame_indices(rng, rec: dict, frames: int, cfg) -> np.ndarray:
  """Indices of the training frames within the stored frames (D3:472-513)."""
  n = len(rec["frames"])
  stride = buckets.frame_stride(
    float(rec["fps"]), cfg.train_fps, eligibility=False, reproduce_official=cfg.reproduce_official
  )
  tsi = list(rec.get("train_start_index") or [])
  if len(tsi) > 3:
    tsi = tsi[1:-1]
  if tsi:
    s = int(tsi[int(rng.integers(len(tsi)))])
    idx = s + stride * np.arange(frames)
    if idx[-1] >= n or s < 0:
      raise CorruptRecordError(f"train_start_index {s} leaves no {frames}-frame window in {n}")
    return idx
  cands = candidate_frames(rec, cfg)
  if frames == 1:
    if not len(cands):
      cands = np.arange(n)
    return cands[int(rng.integers(len(cands)))][None]
  if len(cands) < frames:
    raise CorruptRecordError(
      f"clip has {len(cands)} candidate frames at stride {stride}, fewer than {frames}"
    )
  s = int(rng.integers(len(cands) - frames + 1))
  return cands[s : s + frames]


def select_reference(rng, rec: dict, idx: np.ndarray) -> int:
  """`select_refimg_index`: a reference frame outside [first, last] training frame if possible."""
  n = len(rec["frames"])
  cands = list(rec.get("refimg_index") or range(1, max(2, n - 1)))
  cands = [int(c) for c in cands if 0 <= int(c) < n] or list(range(n))
  outside = [c for c in cands if c < idx[0] or c > idx[-1]]
  pool = outside or cands
  return pool[int(rng.integers(len(pool)))]


def _pose(packed, where: str) -> dict:
  try:
    return as_pose(unpack_pose(packed), where)
  except ValueError as e:
    raise CorruptRecordError(str(e)) from e


def _render_all(poses, h0, w0, m: A.IndexMap, **flags) -> np.ndarray:
  return np.stack([m.gather(render(p, h0, w0, **flags)) for p in poses])


def _normalise(x: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1] (x / 127.5 - 1, computed in place)."""
  y = x.astype(np.float32)
  y *= np.float32(1 / 127.5)
  y -= np.float32(1.0)
  return y


def _masks(face_regions, ocr_regions, m: A.IndexMap):
  face = np.stack([A.rasterize(r, m) for r in face_regions]).astype(np.float32)
  ocr = 1.0 - np.stack([A.rasterize(r, m) for r in ocr_regions]).astype(np.float32)
  return face, ocr


def _assemble(
  *, rng, cfg, plan: A.RefPlan, target, ref, h0, w0, height, width, driving_poses, ref_pose,
  pose_flags, ref_pose_flags, face_regions, ocr_regions,
) -> tuple[dict, dict]:  # fmt: skip
  """Shared tail: index maps, rendering, masking, zoom, normalisation, reference noise."""
  base = A.crop_resize_map(h0, w0, height, width)
  vmap = A.zoom_map(h0, w0, plan.zoom_video).then(base) if plan.zoom_video != 1 else base
  if plan.zoom_ref != 1:
    z = A.zoom_map(h0, w0, plan.zoom_ref)
    mask_map = z.then(base)
    ref_map = z.then(z).then(base) if plan.ref_zoom_quirk else mask_map
    ref_pose_map = base if plan.ref_zoom_quirk else mask_map
  else:
    mask_map = ref_map = ref_pose_map = base
  frames = len(driving_poses)
  blank = np.full((height, width, 3), -1.0, np.float32)

  # Frames are gathered one by one as they are decoded (no full-resolution clip in memory).
  if plan.ref_keep and frames == 1:
    video = _normalise(vmap.gather(ref[None]))  # T = 1: the target is the unmasked reference
  else:
    video = _normalise(np.stack([vmap.gather(f) for f in target]))
  if plan.drop_pose:
    pose_video = np.broadcast_to(blank, (frames, height, width, 3)).copy()
  else:
    pose_video = _normalise(
      _render_all(driving_poses, h0, w0, vmap, drawing=cfg.pose_drawing, **pose_flags)
    )
  if plan.drop_ref:
    ref_image, ref_mask = blank[None].copy(), np.zeros((1, height, width, 1), np.float32)
  else:
    hole = A.rasterize(plan.region, ref_map)
    ref_image = np.where(hole[..., None], np.float32(-1.0), _normalise(ref_map.gather(ref)))[None]
    ref_mask = A.rasterize(plan.region, mask_map).astype(np.float32)[None, ..., None]
  if plan.drop_ref_pose:
    ref_pose_img = blank[None].copy()
  else:
    hole = A.rasterize(plan.region, ref_pose_map)
    drawn = render(ref_pose, h0, w0, drawing=cfg.pose_drawing, **ref_pose_flags)
    drawn = _normalise(ref_pose_map.gather(drawn))
    ref_pose_img = np.where(hole[..., None], np.float32(-1.0), drawn)[None]
  face_mask, ocr_mask = _masks(face_regions, ocr_regions, vmap)
  ref_image, sigma = A.reference_noise(
    rng, ref_image, ref_mask[..., 0:1], prob=cfg.ref_noise_prob, log_mean=cfg.ref_noise_mean,
    log_std=cfg.ref_noise_std, double_exp=cfg.reproduce_official,
  )  # fmt: skip
  sample = {
    "video": video,
    "pose_video": pose_video,
    "ref_image": ref_image.astype(np.float32),
    "ref_mask": ref_mask,
    "ref_pose": ref_pose_img,
    "face_mask": face_mask,
    "ocr_mask": ocr_mask.astype(np.float32),
    "pose_dropped": np.bool_(plan.drop_pose),
  }
  return sample, {"ref_noise_sigma": sigma}


def _frame(rec: dict, i: int, h0: int, w0: int) -> np.ndarray:
  f = decode_image(rec["frames"][i])
  if f.shape[:2] != (h0, w0):
    raise CorruptRecordError(f"frame {i} of {rec.get('id')} is {f.shape[:2]}, not {h0}x{w0}")
  return f


def video_sample(rec: dict, rng, cfg, height: int, width: int, frames: int, pool=None):
  """A clip record -> (sample fields, info). `pool`: callable rng -> pool record, or None."""
  h0, w0 = int(rec["height"]), int(rec["width"])
  idx = sample_frame_indices(rng, rec, frames, cfg)
  if cfg.i2v > 0 and rng.random() < cfg.i2v:  # stage 1: the first training frame (DR:478-479)
    ref_idx = int(idx[0])
  else:
    ref_idx = select_reference(rng, rec, idx)
  poses = [_pose(rec["poses"][int(i)], f"{rec.get('id')} pose[{int(i)}]") for i in idx]
  ref_pose = _pose(rec["poses"][ref_idx], f"{rec.get('id')} pose[{ref_idx}]")
  without_face = bool(rng.random() < cfg.without_face_prob)
  drawn, head_change, face_change = _face_enhancement(rng, cfg, poses, h0, w0, pool)
  plan = A.plan_video_reference(rng, cfg.masking_odds, ref_pose, h0, w0, width / height)
  target = (_frame(rec, int(i), h0, w0) for i in idx)
  ref = _frame(rec, ref_idx, h0, w0)
  sample, info = _assemble(
    rng=rng, cfg=cfg, plan=plan, target=target, ref=ref, h0=h0, w0=w0, height=height,
    width=width, driving_poses=drawn, ref_pose=ref_pose,
    pose_flags=dict(without_face=without_face, face_change=face_change, head_change=head_change),
    ref_pose_flags=dict(without_face=without_face or cfg.ref_pose_without_face),
    face_regions=A.face_regions(poses, h0, w0, cfg.hand_mask),
    ocr_regions=A.ocr_regions(rec.get("ocr_boxes"), idx, frames, h0, w0),
  )  # fmt: skip
  info.update(
    kind="clip", frames=idx, ref_index=ref_idx, plan=plan, without_face=without_face,
    head_change=head_change, face_change=face_change, perturbed=drawn is not poses,
  )  # fmt: skip
  return sample, info


def pair_sample(rec: dict, rng, cfg, height: int, width: int, pool=None):
  """An image-pair record -> (sample fields with F = 1, info)."""
  src = decode_image(rec["source"])
  same = bool(rec.get("same")) or bool(cfg.only_ref)
  tgt = src if same else decode_image(rec["target"])
  h0, w0 = tgt.shape[:2]
  if src.shape != tgt.shape:
    # Source and target of one pair may differ in size; the source is resized to the target's.
    import cv2

    src = cv2.resize(src, (w0, h0), interpolation=cv2.INTER_NEAREST)
  src_pose = _pose(rec["source_pose"], f"{rec.get('id')} source_pose")
  tgt_pose = src_pose if same else _pose(rec["target_pose"], f"{rec.get('id')} target_pose")
  caption = str(rec.get("caption", "")).lower()
  without_face = any(w in caption for w in ("cartoon", "animate", "anime"))
  drawn, head_change, face_change = _face_enhancement(rng, cfg, [tgt_pose], h0, w0, pool)
  plan = A.plan_image_reference(
    rng, cfg.masking_odds, src_pose, h0, w0, width / height, same, official=cfg.reproduce_official
  )
  sample, info = _assemble(
    rng=rng, cfg=cfg, plan=plan, target=tgt[None], ref=src, h0=h0, w0=w0, height=height,
    width=width, driving_poses=drawn, ref_pose=src_pose,
    pose_flags=dict(without_face=without_face, face_change=face_change, head_change=head_change),
    ref_pose_flags=dict(without_face=without_face or cfg.ref_pose_without_face),
    face_regions=A.face_regions([tgt_pose], h0, w0, cfg.hand_mask),
    ocr_regions=[A.Region()],
  )  # fmt: skip
  info.update(
    kind="pair", plan=plan, without_face=without_face, head_change=head_change,
    face_change=face_change, perturbed=drawn is not None and drawn[0] is not tgt_pose,
  )  # fmt: skip
  return sample, info


def _face_enhancement(rng, cfg, poses, h0, w0, pool):
  if pool is None or cfg.change_pose <= 0 or rng.random() >= cfg.change_pose:
    return poses, False, False
  rnd = pool_pose(pool(rng, h0 / w0), h0 / w0)
  return enhance(
    rng, poses, rnd, w0 / h0, limb_prob=cfg.limb_change_prob, face_prob=cfg.face_change_prob
  )
