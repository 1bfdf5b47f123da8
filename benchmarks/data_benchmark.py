"""Data pipeline throughput: clips per second per worker at the 512 and 768 buckets.

Writes a synthetic dataset of 720x1280 / 1280x720 clips (JPEG frames with texture, DWPose-style
poses, a pose pool), then

1. builds 29-frame samples in this process with stage-2 augmentations, pose rendering included,
   forcing the 512 and the 768 bucket, and times each stage (JPEG decode, pose rendering, face
   enhancement, crop/resize/normalise, masks, reference noise);
2. runs `train_iterator` end to end with `--workers` Grain worker processes (real buckets).

    python benchmarks/data_benchmark.py [--samples 6] [--workers 2] [--stage 2]

Reports wall-clock rates and CPU seconds per clip (the per-core cost, which is what matters on a
shared machine whose load inflates wall-clock time); stage times are CPU times.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data_pipeline import (  # noqa: E402
  augment,
  buckets,
  get_data_config,
  synthetic,  # noqa: E402
  train_iterator,
)
from data_pipeline import face_enhance as fe  # noqa: E402
from data_pipeline import sample as S  # noqa: E402
from data_pipeline.config import DataConfig  # noqa: E402
from data_pipeline.pipeline import SampleLoader  # noqa: E402
from data_pipeline.records import DatasetWriter, encode_image, pack_pose  # noqa: E402

TIMES = collections.defaultdict(float)


def _timed(name, fn):
  @functools.wraps(fn)
  def wrapper(*a, **k):
    t = time.process_time()
    try:
      return fn(*a, **k)
    finally:
      TIMES[name] += time.process_time() - t

  return wrapper


def _instrument():
  S.render = _timed("pose rendering (o2a_jax.pose.render)", S.render)
  S.decode_image = _timed("JPEG decode", S.decode_image)
  S._normalise = _timed("crop/resize gather + normalise", S._normalise)
  S._masks = _timed("face/ocr masks", S._masks)
  augment.reference_noise = _timed("reference noise", augment.reference_noise)
  S.A.reference_noise = augment.reference_noise
  S.enhance = _timed("face enhancement", fe.enhance)
  S._pose = _timed("pose unpack/validate", S._pose)


def write_dataset(path, clips: int, frames: int) -> None:
  rng = np.random.default_rng(0)
  w = DatasetWriter(path, records_per_shard=8)
  for c in range(clips):
    h, wd = (720, 1280) if c % 2 == 0 else (1280, 720)
    bg = synthetic._background(rng, h, wd).astype(np.int16)
    tex = rng.integers(-12, 13, (h, wd, 3), dtype=np.int16)  # camera-like texture for JPEG size
    base = np.clip(bg + tex, 0, 255).astype(np.uint8)
    enc, poses = [], []
    for t in range(frames):
      body, face, hands = synthetic.figure_pixels(wd * 0.5 + 3 * t, 0.55 * h, 0.5 * h, t / 4)
      enc.append(encode_image(synthetic.draw_frame(base, body, face, h, wd)))
      poses.append(pack_pose(synthetic.pose_dict(body, face, hands, h, wd)))
    w.add(
      {
        "kind": "clip",
        "id": f"c{c}",
        "fps": 30.0,
        "height": h,
        "width": wd,
        "frames": enc,
        "poses": poses,
        "start_frame": 0,
        "end_frame": frames,
        "refimg_index": None,
        "train_start_index": None,
        "ocr_boxes": None,
        "caption": "",
      }
    )
  for q in range(8):
    body, face, hands = synthetic.figure_pixels(400, 500, rng.uniform(400, 500), q)
    raw = synthetic.raw_dwpose(body, face, hands)
    w.add({"kind": "pool", "id": f"p{q}", "height": 1000, "width": 800, **raw})
  w.close()


def bench_bucket(loader: SampleLoader, res: str, samples: int) -> dict:
  TIMES.clear()
  t0, c0 = time.perf_counter(), time.process_time()
  sizes = set()
  for i in range(samples):
    kind, idx = 0, i % len(loader.clips)
    h0, w0 = int(loader.clips.meta["height"][idx]), int(loader.clips.meta["width"][idx])
    hh, ww = buckets.target_size(h0, w0, res)
    sizes.add((hh, ww))
    rng = np.random.default_rng([1, i])
    loader.build(kind, idx, (res, hh, ww, 29), rng)
  total, cpu = time.perf_counter() - t0, time.process_time() - c0
  return {
    "clips_per_s": samples / total,
    "s_per_clip": total / samples,
    "sizes": sorted(sizes),
    "cpu_per_clip": cpu / samples,
    "stages": {k: v / samples for k, v in TIMES.items()},
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--samples", type=int, default=6, help="samples per bucket (in-process)")
  ap.add_argument("--workers", type=int, default=2, help="Grain workers for the end-to-end run")
  ap.add_argument("--batches", type=int, default=6, help="batches for the end-to-end run")
  ap.add_argument("--stage", type=int, default=2)
  args = ap.parse_args()
  from absl import flags

  flags.FLAGS.mark_as_parsed()
  with tempfile.TemporaryDirectory() as d:
    t = time.perf_counter()
    write_dataset(d, clips=4, frames=64)
    print(
      f"dataset: 4 clips x 64 frames of 720x1280/1280x720 written in "
      f"{time.perf_counter() - t:.1f} s"
    )
    cfg = get_data_config(args.stage)
    cfg.source = d
    cfg.global_batch = 1
    loader = SampleLoader(DataConfig.from_config(cfg), d, None, 0, 1)
    _instrument()
    for res in ("512", "768"):
      r = bench_bucket(loader, res, args.samples)
      print(
        f"\nbucket {res} {r['sizes']}, 29 frames, stage {args.stage}, 1 process: "
        f"wall {r['clips_per_s']:.2f} clips/s ({r['s_per_clip']:.2f} s/clip); CPU "
        f"{r['cpu_per_clip']:.2f} s/clip = {1 / r['cpu_per_clip']:.2f} clips/s per core"
      )
      other = r["cpu_per_clip"] - sum(r["stages"].values())
      for k, v in sorted(r["stages"].items(), key=lambda kv: -kv[1]) + [("other", other)]:
        print(f"  {k:40s} {v * 1000:8.0f} ms CPU/clip  {100 * v / r['cpu_per_clip']:5.1f} %")
    if args.workers > 0:
      cfg.worker_count = args.workers
      cfg.global_batch = args.workers
      it = train_iterator(cfg)
      next(it)  # worker start-up
      import psutil

      me = psutil.Process()

      def cpu_all():
        procs = [me, *me.children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs)

      t, c = time.perf_counter(), cpu_all()
      n = 0
      for _ in range(args.batches):
        b = next(it)
        n += len(b["pose_dropped"])
      dt, dc = time.perf_counter() - t, cpu_all() - c
      shape = b["video"].shape
      it.close()
      print(
        f"\nend to end, {args.workers} workers (real buckets, images/T=1 mixed in; last batch "
        f"{shape}): {n / dt:.2f} samples/s = {n / dt / args.workers:.2f} per worker "
        f"on {os.cpu_count()} cores; CPU {dc / n:.2f} s/sample (all processes) = "
        f"{n / dc:.2f} samples/s per core"
      )


if __name__ == "__main__":
  main()
