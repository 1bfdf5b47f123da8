"""Augmentation invariants (official training recipe): masks, crops, dropout frequencies, face
enhancement and its dim signal, reference noise, index-map geometry."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline import augment as A
from data_pipeline import buckets, get_data_config, synthetic
from data_pipeline import sample as S
from data_pipeline.config import DataConfig
from data_pipeline.face_enhance import enhance, pool_pose
from data_pipeline.records import deserialize, pack_pose, serialize

H0, W0 = 96, 128


def _cfg(**kw):
  c = get_data_config(2)
  c.frames = 5
  c.update(kw)
  return DataConfig.from_config(c)


def _pose(cx=64.0, phase=0.0, h=H0, w=W0):
  body, face, hands = synthetic.figure_pixels(cx, 0.55 * h, 0.5 * h, phase=phase)
  return synthetic.pose_dict(body, face, hands, h, w)


@pytest.fixture(scope="module")
def clip_record():
  rng = np.random.default_rng(0)
  bg = rng.integers(30, 220, (H0, W0, 3), dtype=np.uint8)
  from data_pipeline.records import encode_image

  frames, poses = [], []
  for t in range(30):
    body, face, hands = synthetic.figure_pixels(50 + t, 0.55 * H0, 0.5 * H0, phase=t / 3)
    frames.append(encode_image(synthetic.draw_frame(bg, body, face, H0, W0)))
    poses.append(pack_pose(synthetic.pose_dict(body, face, hands, H0, W0)))
  rec = {
    "kind": "clip",
    "id": "c",
    "fps": 16.0,
    "height": H0,
    "width": W0,
    "frames": frames,
    "poses": poses,
    "start_frame": 0,
    "end_frame": 30,
    "refimg_index": None,
    "train_start_index": None,
    "ocr_boxes": [[[0, 0, 20, 10]]] * 30,
    "caption": "",
  }
  return deserialize(serialize(rec))


@pytest.fixture(scope="module")
def pool_record():
  body, face, hands = synthetic.figure_pixels(70, 110, 100, phase=1.0)
  face = face[30] + (face - face[30]) * [1.3, 0.8]
  raw = synthetic.raw_dwpose(body, face, hands)
  return {"kind": "pool", "height": 200, "width": 140, **raw}


def test_index_maps_match_reference_resampling():
  img = np.random.default_rng(0).integers(0, 255, (H0, W0, 3), dtype=np.uint8)
  m = A.crop_resize_map(H0, W0, 64, 48)  # portrait target from a landscape frame: centre crop
  out = m.gather(img)
  cw = int(round(H0 * 48 / 64))
  left = (W0 - cw) // 2
  crop = img[:, left : left + cw]
  rows = np.floor(np.arange(64) * H0 / 64).astype(int)
  cols = np.floor(np.arange(48) * cw / 48).astype(int)
  assert np.array_equal(out, crop[rows][:, cols])
  z = A.zoom_map(H0, W0, 1.5)
  up = img[np.floor(np.arange(144) * H0 / 144).astype(int)][
    :, np.floor(np.arange(192) * W0 / 192).astype(int)
  ]
  assert np.array_equal(z.gather(img), up[24 : 24 + H0, 32 : 32 + W0])
  assert np.array_equal(z.then(m).gather(img), m.gather(z.gather(img)))


def test_face_crop_keeps_face_box_inside():
  cfg = _cfg(pose_cfg=0.0, refimg_cfg=0.0, refimg_crop=1.0, ref_keep=0.0, zoomin=0.0)
  n_crop = 0
  for seed in range(300):
    rng = np.random.default_rng(seed)
    ref = _pose(cx=rng.uniform(30, 100), phase=rng.uniform(0, 6))
    plan = A.plan_video_reference(
      rng, cfg.masking_odds, ref, H0, W0, rng.choice([0.5, 0.75, 1.0, 1.78])
    )
    fb = A.face_box(ref, H0, W0)
    assert fb is not None
    if plan.case == "face_crop":
      n_crop += 1
      x1, y1, x2, y2 = plan.keep_box
      assert x1 <= fb[0] and y1 <= fb[1] and x2 >= fb[2] and y2 >= fb[3]
      assert plan.region.outside and plan.region.boxes == (plan.keep_box,)
    else:
      assert plan.case == "none"  # no crop fits: nothing masked
  assert n_crop > 200


@pytest.mark.parametrize(
  "overrides",
  [
    dict(refimg_crop=1.0, zoomin=0.0),  # face-centred crops
    dict(refimg_crop=0.0, zoomin=1.0),  # random rectangles (some) with reference/video zoom
  ],
)
def test_mask_covers_exactly_the_zeroed_region(clip_record, overrides):
  cfg = _cfg(pose_cfg=0.0, refimg_cfg=0.0, ref_keep=0.0, ref_noise_prob=0.0, **overrides)
  masked = 0
  for seed in range(12):
    sample, info = S.video_sample(clip_record, np.random.default_rng(seed), cfg, 64, 80, 5)
    mask = sample["ref_mask"][0, ..., 0] > 0.5
    ref, ref_pose = sample["ref_image"][0], sample["ref_pose"][0]
    assert np.all(ref[mask] == -1) and np.all(ref_pose[mask] == -1)
    assert np.all(ref[~mask].max(-1) > -1)  # synthetic pixels are >= 20, never black
    masked += mask.any()
  assert masked >= 2


def test_reference_dropout_frequencies():
  cfg = _cfg()  # stage 2: pose+ref drop 0.1, ref drop 0.1, ref_keep 0.2
  n = 4000
  cases = {"pose_ref_drop": 0, "ref_drop": 0, "keep": 0, "pose_dropped": 0}
  ref = _pose()
  rng = np.random.default_rng(0)
  for _ in range(n):
    plan = A.plan_video_reference(rng, cfg.masking_odds, ref, H0, W0, 1.0)
    cases["pose_ref_drop"] += plan.case == "pose_ref_drop"
    cases["ref_drop"] += plan.case == "ref_drop"
    cases["keep"] += plan.ref_keep
    cases["pose_dropped"] += plan.drop_pose
    if plan.drop_pose:
      assert plan.drop_ref_pose
  expect = {"pose_ref_drop": 0.1, "ref_drop": 0.1, "keep": 0.8 * 0.2, "pose_dropped": 0.1 + 0.16}
  for k, p in expect.items():
    assert abs(cases[k] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (k, cases[k] / n)


@pytest.mark.parametrize("official,p_ref_drop", [(False, 0.1), (True, 0.9 * 0.2)])
def test_image_reference_dropout_fixed_and_official(official, p_ref_drop):
  cfg = _cfg(reproduce_official=official)
  n, hits, zoom_quirk = 4000, 0, 0
  rng = np.random.default_rng(1)
  src = _pose()
  for _ in range(n):
    plan = A.plan_image_reference(
      rng, cfg.masking_odds, src, H0, W0, 1.0, same_image=True, official=official
    )
    hits += plan.case == "ref_drop"
    zoom_quirk += plan.ref_zoom_quirk
    if plan.case in ("face_crop", "center_crop"):
      assert plan.region.outside
  assert abs(hits / n - p_ref_drop) < 4 * np.sqrt(p_ref_drop * (1 - p_ref_drop) / n)
  assert (zoom_quirk > 0) == official


def test_reference_noise_fixed_and_double_exp():
  ref = np.zeros((1, 8, 8, 3), np.float32)
  mask = np.zeros((1, 8, 8, 1), np.float32)
  mask[:, :4] = 1
  noise = dict(prob=1.0, log_mean=-3.0, log_std=0.5)  # the recipe's sigma distribution
  for official, lo, hi in ((False, 0.005, 0.3), (True, 1.0, 1.5)):
    sigmas = []
    for seed in range(50):
      rng = np.random.default_rng(seed)
      out, sigma = A.reference_noise(rng, ref, mask, **noise, double_exp=official)
      sigmas.append(sigma)
      assert np.all(out[:, :4] == 0)  # masked pixels untouched
    assert lo < np.median(sigmas) < hi
  black = np.full_like(ref, -1.0)
  out, sigma = A.reference_noise(np.random.default_rng(0), black, mask, **noise)
  assert sigma == 0 and np.all(out == -1)


def test_face_enhancement_flags_and_geometry(pool_record):
  cfg = _cfg()
  odds = dict(limb_prob=cfg.limb_change_prob, face_prob=cfg.face_change_prob)
  rnd = pool_pose(pool_record, H0 / W0)
  poses = [_pose(cx=50 + t, phase=t) for t in range(5)]
  counts = {"limb": 0, "face": 0, "none": 0}
  for seed in range(300):
    rng = np.random.default_rng(seed)
    out, head_change, face_change = enhance(rng, poses, rnd, W0 / H0, **odds)
    if not face_change:
      assert not head_change and out is poses
      counts["none"] += 1
      continue
    counts["limb" if head_change else "face"] += 1
    moved = [not np.allclose(o["faces"], p["faces"]) for o, p in zip(out, poses)]
    assert all(moved)
    for o, p in zip(out, poses):  # the body below the head never moves
      assert np.allclose(o["bodies"]["candidate"][1:14], p["bodies"]["candidate"][1:14])
      assert np.allclose(poses[0]["faces"], _pose(cx=50, phase=0)["faces"])  # inputs untouched
  n = 300
  # limb p = 0.4; face-only = 0.6 * 0.7; none = 0.6 * 0.3.
  for k, p in (("limb", 0.4), ("face", 0.42), ("none", 0.18)):
    assert abs(counts[k] / n - p) < 4 * np.sqrt(p * (1 - p) / n), (k, counts)


def test_dim_signal_drawn_iff_perturbed(clip_record, pool_record, monkeypatch):
  calls = []
  real_render = S.render

  def spy(pose, h, w, **flags):
    calls.append(flags)
    return real_render(pose, h, w, **flags)

  monkeypatch.setattr(S, "render", spy)
  cfg = _cfg(change_pose=0.5, pose_cfg=0.0, ref_keep=0.0, refimg_cfg=0.0)
  seen = set()
  for seed in range(10):
    calls.clear()
    _, info = S.video_sample(
      clip_record, np.random.default_rng(seed), cfg, 64, 80, 5, pool=lambda rng, r: pool_record
    )
    driving, ref_flags = calls[:5], calls[5]
    assert all(f == driving[0] for f in driving)
    assert driving[0]["face_change"] == info["perturbed"]
    assert driving[0]["head_change"] == (info["perturbed"] and info["head_change"])
    assert not ref_flags.get("face_change") and not ref_flags.get("head_change")
    seen.add(info["perturbed"])
  assert seen == {True, False}


def test_face_and_ocr_masks_at_latent_resolution(clip_record):
  cfg = _cfg(pose_cfg=0.0, refimg_cfg=0.0, zoomin=0.0)
  sample, info = S.video_sample(clip_record, np.random.default_rng(3), cfg, 64, 80, 5)
  assert sample["face_mask"].shape == (2, 64, 80) and sample["ocr_mask"].shape == (2, 64, 80)
  assert sample["face_mask"].mean() > 0.01  # faces and hands of the figure
  # Text box [0,0,20,10) (+10 %, <= 20 px) in source pixels: the top-left output corner is 0.
  assert sample["ocr_mask"][0, 0, 0] == 0 and sample["ocr_mask"].mean() > 0.8
  groups = A.latent_groups(29)
  assert groups[0] == [0] and groups[1] == [1, 2, 3, 4] and len(groups) == 8


def test_frame_sampling_stride_and_reference_outside_window(clip_record):
  rec = dict(
    clip_record,
    fps=48.0,
    frames=clip_record["frames"] * 4,
    poses=clip_record["poses"] * 4,
    end_frame=100,
  )
  cfg = _cfg(frames=9)
  for seed in range(20):
    rng = np.random.default_rng(seed)
    idx = S.sample_frame_indices(rng, rec, 9, cfg)
    assert np.all(np.diff(idx) == 3)  # max(int(48 / 16), 1)
    ref = S.select_reference(rng, rec, idx)
    assert ref < idx[0] or ref > idx[-1]
  assert buckets.frame_stride(40, 16, eligibility=True, reproduce_official=True) == 2
  assert buckets.frame_stride(40, 16, eligibility=True, reproduce_official=False) == 2
  assert buckets.frame_stride(24, 16, eligibility=True, reproduce_official=True) == 2  # round
  assert buckets.frame_stride(24, 16, eligibility=True, reproduce_official=False) == 1


def test_bucket_tables():
  assert buckets.target_size(720, 1280, "512") == (384, 672)
  assert buckets.target_size(1280, 720, "768") == (1008, 576)
  assert buckets.target_size(1000, 1000, "768") == (768, 768)
  assert all(h % 16 == 0 and w % 16 == 0 for _, h, w in buckets.aspect_table("512", 0.125))
  assert buckets.eligible(720, 1280, "768") and not buckets.eligible(480, 640, "768")
