"""`o2a data ...`: build training datasets (ArrayRecord) and write a synthetic one.

o2a data build official CSV OUT [--root DIR] [--pose-pool CSV] [--format folder|tfds]
o2a data build videos DIR OUT [--estimate --det-model ONNX --pose-model ONNX] [--format ...]
o2a data tfds FOLDER OUT            (a built dataset folder -> the TFDS dataset o2a_animation)
o2a data synthetic OUT [--clips N --pairs N --pool N]
"""

from __future__ import annotations

import argparse

from o2a_jax.cli_types import int_at_least
from o2a_jax.io.output_paths import check_writable


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument(
    "--image-format",
    choices=("jpeg", "png"),
    default="jpeg",
    help="frame encoding in the records (JPEG quality 95 or lossless PNG)",
  )
  p.add_argument(
    "--max-frames",
    type=int_at_least(0),
    default=0,
    help="read at most this many frames per video (0 = all)",
  )
  p.add_argument(
    "--max-short-side",
    type=int_at_least(0),
    default=0,
    help="downscale frames whose short side exceeds this (0 = keep)",
  )
  p.add_argument(
    "--records-per-shard",
    type=int_at_least(1),
    default=64,
    help="records per ArrayRecord shard file (default 64)",
  )
  p.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT")
  p.add_argument("--quiet", action="store_true", help="no progress bars or skip reports")
  p.add_argument(
    "--format",
    choices=("folder", "tfds"),
    default="folder",
    help="folder: ArrayRecord shards + metadata (default); tfds: the TFDS dataset o2a_animation "
    "(ArrayRecord, read with tfds.data_source; needs the tfds extra, no TensorFlow)",
  )


def _build(args, build_fn, *sources, **kwargs) -> None:
  """Runs `build_fn(*sources, out, ...)`; with --format tfds into a scratch folder beside OUT
  that becomes the TFDS dataset OUT/o2a_animation/1.0.0 and is then removed."""
  import pathlib
  import shutil

  if args.format == "folder":
    build_fn(*sources, args.out, **kwargs)
    return
  from data_pipeline import tfds_dataset

  out = pathlib.Path(args.out)
  if tfds_dataset.version_dir(out) is not None and not args.overwrite:
    raise FileExistsError(f"{out} already holds a TFDS dataset; pass --overwrite to replace it")
  scratch = out.parent / f".{out.name}.records"
  shutil.rmtree(scratch, ignore_errors=True)
  try:
    build_fn(*sources, scratch, **kwargs)
    if out.exists() and args.overwrite:
      shutil.rmtree(out / tfds_dataset.NAME, ignore_errors=True)
    path = tfds_dataset.build(scratch, out)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  print(f"wrote the TFDS dataset {path}")


def _official(args) -> int:
  check_writable(args.out, flag="OUT", folder=True)
  from data_pipeline.build import build_official

  _build(
    args,
    build_official,
    args.csv,
    root=args.root,
    pose_pool_csv=args.pose_pool,
    image_format=args.image_format,
    max_frames=args.max_frames,
    max_short_side=args.max_short_side,
    records_per_shard=args.records_per_shard,
    overwrite=args.overwrite,
    quiet=args.quiet,
  )
  return 0


def _videos(args) -> int:
  check_writable(args.out, flag="OUT", folder=True)
  from data_pipeline.build import build_videos

  _build(
    args,
    build_videos,
    args.folder,
    estimate=args.estimate,
    det_model=args.det_model,
    pose_model=args.pose_model,
    image_format=args.image_format,
    max_frames=args.max_frames,
    max_short_side=args.max_short_side,
    records_per_shard=args.records_per_shard,
    overwrite=args.overwrite,
    quiet=args.quiet,
  )
  return 0


def _synthetic(args) -> int:
  check_writable(args.out, flag="OUT", folder=True)
  from data_pipeline import synthetic

  info = synthetic.write_dataset(
    args.out,
    clips=args.clips,
    pairs=args.pairs,
    pool=args.pool,
    height=args.height,
    width=args.width,
    frames=args.frames,
    seed=args.seed,
    overwrite=args.overwrite,
  )
  print(f"wrote {info['counts']} to {args.out}")
  return 0


def _tfds(args) -> int:
  check_writable(args.out, flag="OUT", folder=True)
  from data_pipeline import tfds_dataset

  if tfds_dataset.version_dir(args.out) is not None:
    raise FileExistsError(f"{args.out} already holds a TFDS dataset; choose another OUT")
  print(f"wrote the TFDS dataset {tfds_dataset.build(args.folder, args.out)}")
  return 0


def add_parser(subparsers) -> None:
  data = subparsers.add_parser("data", help="build training datasets (ArrayRecord)")
  sub = data.add_subparsers(dest="data_command", metavar="DATA_COMMAND", required=True)
  build = sub.add_parser("build", help="build a training dataset folder")
  kinds = build.add_subparsers(dest="build_source", metavar="SOURCE", required=True)

  p = kinds.add_parser(
    "official",
    help="from the official combined CSV + .npy pose files (the official training data layout)",
  )
  p.add_argument("csv", help="combined_imgvid_dataset.csv (video and image-group rows)")
  p.add_argument("out", help="output dataset folder")
  p.add_argument("--root", default=None, help="base of relative paths (default: the CSV's folder)")
  p.add_argument(
    "--pose-pool",
    action="append",
    default=None,
    help="pose-pool CSV (pose_path,height,width; reads the _raw.npy files); repeatable",
  )
  _common(p)
  p.set_defaults(func=_official)

  p = kinds.add_parser("videos", help="from a folder of videos with <stem>_pose.npy/.json files")
  p.add_argument("folder", help="folder of videos (mp4, mov, ...) or frame folders")
  p.add_argument("out", help="output dataset folder")
  p.add_argument(
    "--estimate",
    action="store_true",
    help="estimate missing poses with local ONNX models (o2a_jax.pose.estimate)",
  )
  p.add_argument("--det-model", default=None, help="person detector ONNX file")
  p.add_argument("--pose-model", default=None, help="whole-body pose ONNX file")
  _common(p)
  p.set_defaults(func=_videos)

  p = sub.add_parser(
    "tfds",
    help="a built dataset folder -> the TFDS dataset o2a_animation (no TensorFlow)",
    description="Writes OUT/o2a_animation/1.0.0: splits clip, pair and pool in ArrayRecord "
    "files, readable with tfds.data_source / tfds.builder_from_directory and by o2a train "
    "(--config.data.source=OUT). Example i of a split is record i of FOLDER.",
  )
  p.add_argument("folder", help="a dataset folder written by `o2a data build`")
  p.add_argument("out", help="TFDS data_dir to write into")
  p.set_defaults(func=_tfds)

  p = sub.add_parser(
    "synthetic",
    help="write a tiny random dataset (tests, smoke runs)",
    description="Writes a small dataset of random clips, image pairs and a pose pool in the "
    "training layout (records.py), for smoke runs and tests.",
  )
  p.add_argument("out", help="output dataset folder (must not exist, unless --overwrite)")
  p.add_argument("--clips", type=int_at_least(0), default=4, help="video clips (default 4)")
  p.add_argument("--pairs", type=int_at_least(0), default=3, help="image pairs (default 3)")
  p.add_argument("--pool", type=int_at_least(0), default=4, help="pose-pool entries (default 4)")
  p.add_argument(
    "--height", type=int_at_least(16, 16), default=96, help="frame height, a multiple of 16"
  )
  p.add_argument(
    "--width", type=int_at_least(16, 16), default=128, help="frame width, a multiple of 16"
  )
  p.add_argument("--frames", type=int_at_least(1), default=40, help="frames per clip (default 40)")
  p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  p.add_argument("--overwrite", action="store_true", help="replace a dataset already in OUT")
  p.set_defaults(func=_synthetic)
