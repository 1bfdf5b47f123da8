"""The Grain pipeline end to end on tiny synthetic datasets: fields, determinism, resume, sharding,
corrupt records, and building datasets from the official layout and from video folders."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from data_pipeline import (
  checkpoint_restore_args,
  checkpoint_save_args,
  get_data_config,
  synthetic,
  train_iterator,
)
from data_pipeline.batch import check_batch
from data_pipeline.config import DataConfig
from data_pipeline.pipeline import EpochPlanner, SampleLoader
from data_pipeline.records import (
  CorruptDataError,
  CorruptRecordError,
  RecordSource,
  deserialize,
  serialize,
)
from o2a_jax.vae.strides import latent_frames


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("data")
  synthetic.write_dataset(d, clips=12, pairs=4, pool=4, frames=40)
  return d


@pytest.fixture(scope="module")
def corrupt_dataset(tmp_path_factory):
  d = tmp_path_factory.mktemp("corrupt")
  synthetic.write_dataset(d, clips=4, pairs=0, pool=0, frames=24, corrupt=4)
  return d


def _cfg(source, **kw):
  c = get_data_config(2)
  c.source = str(source)
  c.bucket_scale = 0.125  # 512 -> 64, 768 -> 96 pixel buckets
  c.frames = 5
  c.global_batch = 2
  c.update(kw)
  return c


def _typed(source, **kw):
  return DataConfig.from_config(_cfg(source, **kw))


def _take(it, n):
  return [next(it) for _ in range(n)]


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_fields_shapes_and_ranges(dataset):
  it = train_iterator(_cfg(dataset, pose_cfg=0.3, image_ratio=0.4))
  seen_frames = set()
  for batch in _take(it, 6):
    b, f, h, w = check_batch(batch)
    assert b == 2 and h % 16 == 0 and w % 16 == 0
    seen_frames.add(f)
    for k in ("video", "pose_video", "ref_image", "ref_mask", "ref_pose", "face_mask", "ocr_mask"):
      assert batch[k].dtype == np.float32, k
    for k in ("video", "pose_video", "ref_pose"):
      assert batch[k].min() >= -1 and batch[k].max() <= 1, k
    for k in ("ref_mask", "face_mask", "ocr_mask"):
      assert set(np.unique(batch[k])) <= {0.0, 1.0}, k
    assert batch["face_mask"].shape[1] == latent_frames(f)
    assert batch["pose_dropped"].dtype == np.bool_
    for i in np.flatnonzero(batch["pose_dropped"]):
      assert np.all(batch["pose_video"][i] == -1) and np.all(batch["ref_pose"][i] == -1)
    for i in np.flatnonzero(~batch["pose_dropped"]):
      assert batch["pose_video"][i].max() > -1  # something is drawn
  assert it.metrics()["data/samples"] == 12
  assert seen_frames <= {1, 5}


def test_record_roundtrip_and_corrupt_bytes():
  rec = {
    "kind": "pool",
    "id": "x",
    "height": 3,
    "width": 4,
    "candidate": np.ones((1, 134, 2)),
    "score": np.zeros((1, 134), np.float32),
    "faces": None,
  }
  back = deserialize(serialize(rec))
  assert back["score"].dtype == np.float32 and np.array_equal(back["candidate"], rec["candidate"])
  assert back["faces"] is None
  with pytest.raises(CorruptRecordError):
    deserialize(b"\x93garbage")


def test_determinism_across_worker_counts(dataset):
  cfg0 = _cfg(dataset, image_ratio=0.3)
  ref = _take(train_iterator(cfg0), 3)
  again = _take(train_iterator(cfg0), 3)
  assert _same(ref, again)
  # grain 0.2.18 multiprocessing works under pytest here (spawned workers re-import the package).
  it = train_iterator(_cfg(dataset, image_ratio=0.3, worker_count=2))
  try:
    assert _same(ref, _take(it, 3))
  finally:
    it.close()


def test_exact_resume_from_state_and_orbax(dataset, tmp_path):
  import orbax.checkpoint as ocp

  cfg = _cfg(dataset, image_ratio=0.3)
  it = train_iterator(cfg)
  _take(it, 2)
  state = json.loads(json.dumps(it.get_state()))
  mngr = ocp.CheckpointManager(tmp_path / "ckpt")
  save_args = checkpoint_save_args(it)  # a snapshot: the iterator may move on before the save
  expected = _take(it, 2)
  mngr.save(2, args=ocp.args.Composite(data=save_args))
  mngr.wait_until_finished()

  fresh = train_iterator(cfg)
  fresh.set_state(state)
  assert _same(expected, _take(fresh, 2))
  assert fresh.metrics()["data/samples"] == 8

  restored = train_iterator(cfg)
  mngr.restore(2, args=ocp.args.Composite(data=checkpoint_restore_args(restored)))
  mngr.close()
  assert _same(expected, _take(restored, 2))

  other = train_iterator(_cfg(dataset, image_ratio=0.3, seed=7))
  with pytest.raises(ValueError, match="same data config"):
    other.set_state(state)


def test_host_sharding(dataset):
  cfg = _cfg(dataset, image_ratio=0.3, global_batch=4, buckets="mochi")
  whole = _take(train_iterator(cfg), 2)
  parts = [_take(train_iterator(cfg, process_index=p, process_count=2), 2) for p in range(2)]
  for s in range(2):
    for k in whole[s]:
      joined = np.concatenate([parts[0][s][k], parts[1][s][k]])
      assert np.array_equal(joined, whole[s][k]), k
  with pytest.raises(ValueError, match="divisible"):
    train_iterator(cfg, process_index=0, process_count=3)


def test_epoch_plan_reads_each_record_once():
  n = 300
  rng = np.random.default_rng(0)
  sizes = rng.choice([(720, 1280), (1280, 720), (768, 768), (480, 640)], n)
  clips = {
    "height": sizes[:, 0],
    "width": sizes[:, 1],
    "fps": np.full(n, 30.0),
    "start_frame": np.zeros(n, int),
    "end_frame": np.full(n, 200),
    "n_frames": np.full(n, 200),
  }
  cfg = _typed("unused", global_batch=8, frames=29, image_ratio=0.0)
  planner = EpochPlanner(cfg, clips, {})
  for epoch in range(2):
    used = [tuple(m[off + j]) for _, m, off in planner.epoch(epoch) for j in range(8)]
    assert len(used) == len(set(used))  # no record twice in an epoch
    assert len(used) > n - 8 * 20  # at most one partial batch dropped per bucket
  # Process shards of a global batch are disjoint and together the global batch.
  rows = [planner.slot(3, r)[:2] for r in range(8)]
  assert len(set(rows)) == 8


def test_mixing_and_bucket_frequencies():
  n_vid, n_img = 1400, 400
  clips = {
    "height": np.full(n_vid, 720),
    "width": np.full(n_vid, 1280),
    "fps": np.full(n_vid, 25.0),
    "start_frame": np.zeros(n_vid, int),
    "end_frame": np.full(n_vid, 150),
    "n_frames": np.full(n_vid, 150),
  }
  pairs = {"height": np.full(n_img, 1024), "width": np.full(n_img, 768)}
  cfg = _typed("unused", global_batch=1, frames=29, bucket_scale=1.0)
  batches = EpochPlanner(cfg, clips, pairs).epoch(0)
  kinds = np.array([m[o][0] for _, m, o in batches])
  keys = [k for k, _, _ in batches]
  p_img = cfg.image_ratio
  n = len(kinds)
  assert abs(kinds.mean() - p_img) < 4 * np.sqrt(p_img * (1 - p_img) / n) + 1e-9
  res768 = np.mean([k[0] == "768" for k in keys])
  assert abs(res768 - 0.5) < 4 * np.sqrt(0.25 / n)  # stage 2: eligible samples go to 768 w.p. 0.5
  vid512 = [k for k, kind in zip(keys, kinds) if k[0] == "512" and kind == 0]
  single = np.mean([k[3] == 1 for k in vid512])
  assert abs(single - 0.05) < 4 * np.sqrt(0.05 * 0.95 / len(vid512))
  assert {(k[1], k[2]) for k in keys if k[0] == "512" and kinds[keys.index(k)] == 0} == {(384, 672)}


def test_corrupt_records_skipped_counted_and_ceiling(corrupt_dataset):
  src = RecordSource(corrupt_dataset, "clip")
  bad = [i for i in range(len(src)) if src.read(i)["frames"][0] == b"not an image"]
  assert len(bad) == 4
  it = train_iterator(
    _cfg(corrupt_dataset, global_batch=1, max_skipped_fraction=0.9, image_ratio=0.0)
  )
  batches = _take(it, 8)
  for b in batches:
    check_batch(b)
    assert b["video"].max() > -1  # real frames, never a corrupt record
  m = it.metrics()
  assert m["data/skipped_records"] > 0 and m["data/samples"] == 8
  strict = train_iterator(
    _cfg(corrupt_dataset, global_batch=1, max_skipped_fraction=0.0, image_ratio=0.0)
  )
  with pytest.raises(CorruptDataError, match="max_skipped_fraction"):
    _take(strict, 8)


@pytest.mark.parametrize("damage", ["truncate", "garble"])
def test_damaged_shard_skipped_and_named(tmp_path, damage, caplog):
  """A truncated or overwritten shard: its records are skipped and counted, the log names the
  shard, the other shards still feed the run; above the ceiling the run stops with a clear error."""
  d = tmp_path / "data"
  synthetic.write_dataset(d, clips=8, pairs=0, pool=0, frames=24)  # 2 clips per shard
  info = json.loads((d / "dataset_info.json").read_text())
  assert info["shard_counts"]["clip"] == [2, 2, 2, 2]
  shard = d / info["shards"]["clip"][1]
  data = shard.read_bytes()
  if damage == "truncate":
    shard.write_bytes(data[: len(data) // 3])
  else:
    shard.write_bytes(data[:16] + b"\xff" * (len(data) - 16))
  src = RecordSource(d, "clip")
  for i in (0, 1, 4, 5, 6, 7):
    assert src.read(i)["kind"] == "clip"
  with pytest.raises(CorruptRecordError, match=shard.name):
    src.read(2)
  with caplog.at_level("WARNING", logger="data_pipeline.pipeline"):
    it = train_iterator(_cfg(d, global_batch=1, max_skipped_fraction=0.9, image_ratio=0.0))
    for b in _take(it, 8):
      check_batch(b)
  assert it.metrics()["data/skipped_records"] > 0
  assert shard.name in caplog.text
  strict = train_iterator(_cfg(d, global_batch=1, max_skipped_fraction=0.0, image_ratio=0.0))
  with pytest.raises(CorruptDataError, match="named in the log above"):
    _take(strict, 8)


def test_damaged_shard_of_an_older_dataset(tmp_path):
  """Datasets built before shard_counts: the unreadable shard's range is inferred."""
  d = tmp_path / "data"
  synthetic.write_dataset(d, clips=5, pairs=0, pool=0, frames=24)  # shards of 2, 2, 1
  info = json.loads((d / "dataset_info.json").read_text())
  del info["shard_counts"]
  (d / "dataset_info.json").write_text(json.dumps(info))
  shard = d / info["shards"]["clip"][0]
  shard.write_bytes(b"")
  src = RecordSource(d, "clip")
  for i in (0, 1):
    with pytest.raises(CorruptRecordError, match=shard.name):
      src.read(i)
  assert [src.read(i)["kind"] for i in (2, 3, 4)] == ["clip"] * 3


def test_config_errors(dataset):
  with pytest.raises(ValueError, match="source is empty"):
    train_iterator(get_data_config(2))
  with pytest.raises(ValueError, match="4k\\+1"):
    train_iterator(_cfg(dataset, frames=6))


def _pose_list(n, h, w, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for t in range(n):
    body, face, hands = synthetic.figure_pixels(w / 2 + t, 0.55 * h, 0.5 * h, phase=rng.random())
    out.append(synthetic.pose_dict(body, face, hands, h, w))
  return out


def _save_npy(path, poses):
  arr = np.empty(len(poses), dtype=object)
  arr[:] = poses
  np.save(path, arr, allow_pickle=True)


def test_build_official_layout_and_cli(tmp_path):
  from o2a_jax.cli import main
  from o2a_jax.io import video as video_io

  root = tmp_path / "official"
  (root / "videos").mkdir(parents=True)
  (root / "images").mkdir()
  h, w, n = 64, 48, 20
  frames = np.random.default_rng(0).integers(30, 220, (n, h, w, 3), dtype=np.uint8)
  video_io.write_video(root / "videos/v0.mp4", frames, fps=25)
  _save_npy(root / "videos/v0_pose.npy", _pose_list(n, h, w))
  (root / "videos/broken.mp4").write_bytes(b"not a video")
  _save_npy(root / "videos/broken_pose.npy", _pose_list(n, h, w))
  for name in ("i0", "i1"):
    video_io.write_video(root / f"images/{name}.png", frames[:1])
    _save_npy(root / f"images/{name}_pose.npy", _pose_list(1, h, w))
  ocr = json.dumps([[[1, 1, 10, 5]]] + [[] for _ in range(n - 1)])
  pairs = [
    {
      "src_path": "images/i0.png",
      "tgt_path": "images/i1.png",
      "tgt_pose_path": "images/i1_pose.npy",
      "qwen_caption": "",
      "text": "",
    }
  ]
  cols = [
    "path",
    "pose_path",
    "height",
    "width",
    "fps",
    "num_frames",
    "start_frame",
    "end_frame",
    "all_ocr_bbox",
    "train_start_index",
    "refimg_index",
    "qwen_caption",
    "img_pairs",
    "aspect_ratio",
    "resolution",
  ]
  rows = [
    dict(
      path="videos/v0.mp4",
      pose_path="videos/v0_pose.npy",
      height=h,
      width=w,
      fps=25,
      num_frames=n,
      start_frame=2,
      end_frame=15,
      all_ocr_bbox=ocr,
      refimg_index="[1, 5]",
    ),
    dict(
      path="videos/broken.mp4",
      pose_path="videos/broken_pose.npy",
      fps=25,
      start_frame=0,
      end_frame=n,
    ),
    dict(path="image_00000", img_pairs=json.dumps(pairs), height=h, width=w, num_frames=1),
  ]
  with open(root / "data.csv", "w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=cols)
    wr.writeheader()
    wr.writerows(rows)
  body, face, hands = synthetic.figure_pixels(40, 60, 50)
  raw = synthetic.raw_dwpose(body, face, hands)
  pool_raw = np.empty(1, dtype=object)
  pool_raw[:] = [raw]
  np.save(root / "p0_raw.npy", pool_raw, allow_pickle=True)
  (root / "pool.csv").write_text("pose_path,height,width\np0.npy,100,80\nmissing.npy,100,80\n")
  out = tmp_path / "built"
  args = ["data", "build", "official", str(root / "data.csv"), str(out), "--quiet"]
  assert main([*args, "--pose-pool", str(root / "pool.csv")]) == 0
  info = json.loads((out / "dataset_info.json").read_text())
  assert info["counts"] == {"clip": 1, "pair": 1, "pool": 1}
  assert info["summary"]["skipped"] == 2  # the broken video and the missing pool file
  pool = RecordSource(out, "pool").read(0)
  assert pool["candidate"].shape == (1, 134, 2) and (pool["height"], pool["width"]) == (100, 80)
  assert "broken" in info["summary"]["skipped_items"][0]
  clip = RecordSource(out, "clip").read(0)
  assert (clip["start_frame"], clip["end_frame"], clip["refimg_index"]) == (2, 15, [1, 5])
  assert len(clip["frames"]) == n and clip["ocr_boxes"][0] == [[1.0, 1.0, 10.0, 5.0]]
  assert not list(out.glob(".tmp-*"))
  # Building into an existing dataset needs --overwrite (exit code 2, one-line error).
  assert main(args) == 2


def test_build_video_folder(tmp_path):
  from o2a_jax.io import video as video_io
  from o2a_jax.pose import write_poses_json

  vids = tmp_path / "vids"
  vids.mkdir()
  h, w, n = 48, 64, 12
  frames = np.random.default_rng(1).integers(30, 220, (n, h, w, 3), dtype=np.uint8)
  video_io.write_video(vids / "a.mp4", frames, fps=30)
  write_poses_json(vids / "a_pose.json", _pose_list(n, h, w), w, h)
  video_io.write_video(vids / "b.mp4", frames, fps=30)  # no pose file: reported, skipped
  from data_pipeline.build import build_videos

  info = build_videos(vids, tmp_path / "out", quiet=True)
  assert info["counts"]["clip"] == 1 and info["summary"]["skipped"] == 1
  from o2a_jax.cli import main

  assert main(["data", "synthetic", str(tmp_path / "syn"), "--clips", "1", "--frames", "8"]) == 0
  assert len(RecordSource(tmp_path / "syn", "clip")) == 1
  rec = RecordSource(tmp_path / "out", "clip").read(0)
  assert rec["fps"] == pytest.approx(30.0) and len(rec["poses"]) == n


def test_loader_info_matches_plan(dataset):
  cfg = _typed(dataset)
  loader = SampleLoader(cfg, dataset, None, 0, 1)
  _, info, skipped = loader.global_sample(0, 1)
  kind, idx, key, _, _ = loader.planner.slot(0, 1)
  assert skipped == 0 and info["record"] == (kind, idx) and info["key"] == key


def test_build_video_folder_with_estimator(tmp_path, monkeypatch):
  import o2a_jax.pose.estimate as est
  from data_pipeline.build import build_videos
  from o2a_jax.io import video as video_io

  class FakeEstimator:  # stands in for the ONNX models, which tests cannot download
    def __init__(self, det_model, pose_model):
      self.models = (det_model, pose_model)

    def estimate_video(self, frames, progress=True):
      n, h, w = frames.shape[:3]
      kp = np.random.default_rng(0).uniform(0.2, 0.8, (n, 133, 3)) * [w, h, 1]
      kp[..., 2] = 0.9
      return kp

  monkeypatch.setattr(est, "PoseEstimator", FakeEstimator)
  vids = tmp_path / "vids"
  vids.mkdir()
  frames = np.random.default_rng(2).integers(30, 220, (6, 32, 48, 3), dtype=np.uint8)
  video_io.write_video(vids / "c.mp4", frames, fps=24)
  with pytest.raises(ValueError, match="--det-model"):
    build_videos(vids, tmp_path / "x", estimate=True, quiet=True)
  info = build_videos(
    vids, tmp_path / "out", estimate=True, det_model="d.onnx", pose_model="p.onnx", quiet=True
  )
  assert info["counts"]["clip"] == 1
  assert len(RecordSource(tmp_path / "out", "clip").read(0)["poses"]) == 6


@pytest.mark.parametrize("official", [False, True])
def test_clip_capacity_matches_frame_sampler(official):
  from data_pipeline.sample import candidate_frames

  rng = np.random.default_rng(0)
  n = 200
  fps = rng.choice([8.0, 16.0, 24.0, 25.0, 29.97, 30.0, 50.0, 60.0], n)
  nf = rng.integers(5, 400, n)
  start = (rng.random(n) * nf * 0.5).astype(int)
  end = np.minimum(start + rng.integers(1, 300, n), nf)
  clips = {
    "height": np.full(n, 720),
    "width": np.full(n, 1280),
    "fps": fps,
    "start_frame": start,
    "end_frame": end,
    "n_frames": nf,
  }
  cfg = _typed("unused", frames=29, global_batch=1, reproduce_official=official)
  cap = EpochPlanner(cfg, clips, {})._clip_capacity()
  for i in range(n):
    row = {k: v[i] for k, v in clips.items()}
    if official:  # the official eligibility: (T_avail - 1) >= 28 * round(fps / 16)
      avail = min(end[i] - start[i], int(10 * fps[i]))
      assert (cap[i] >= 29) == (avail - 1 >= 28 * max(round(fps[i] / 16), 1))
    else:  # fixed: eligible exactly when the sampler has 29 candidate frames
      assert cap[i] == len(candidate_frames(row, cfg))


@pytest.mark.parametrize("stage", [1, 3])
def test_stages_and_official_mode_run(dataset, stage):
  c = get_data_config(stage)
  c.update(
    source=str(dataset),
    bucket_scale=0.125,
    frames=5,
    global_batch=2,
    image_ratio=0.5,
    reproduce_official=True,
    zoomin=0.5,
  )
  it = train_iterator(c)
  for batch in _take(it, 3):
    check_batch(batch)
    assert batch["ref_mask"].max() <= 1 and batch["ocr_mask"].min() >= 0
