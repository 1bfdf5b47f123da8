"""Generates a puppet world (synthetic animation data with exact pose ground truth) on disk.

  python scripts/make_puppet_world.py --out /tmp/puppets --videos 64 --images 32 --seed 0 --size 64

Writes the official training data layout (`train.csv`, `heldout.csv`,
MP4 clips with per-video `_pose.npy` files, image pairs with `_pose.npy` files) plus lossless ground
truth under `gt/`; see `o2a_jax/puppet/world.py` for the layout. The same files for a given seed
and any --workers (at the default lossless --quality 0).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from o2a_jax.puppet.world import WorldConfig, write_world  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
  p.add_argument("--videos", type=int, default=64, help="training clips (default 64)")
  p.add_argument("--images", type=int, default=32, help="training image pairs (default 32)")
  p.add_argument("--heldout", type=int, default=8, help="held-out clips on held-out puppets (8)")
  p.add_argument("--seed", type=int, default=0, help="world seed (default 0)")
  p.add_argument("--size", type=int, default=64, help="frame height and width, multiple of 16")
  p.add_argument("--frames", type=int, default=48, help="frames per clip (default 48)")
  p.add_argument("--heldout-frames", type=int, default=0, help="held-out clip frames (0: --frames)")
  p.add_argument("--fps", type=float, default=16.0, help="frame rate (default 16)")
  p.add_argument("--puppets", type=int, default=0, help="training identities (0: videos // 4)")
  p.add_argument(
    "--reference-background", choices=("same", "new"), default="same",
    help="background of misaligned references: the target's scene (same, default) or an "
    "independent one (new, the worlds made before this option)",
  )  # fmt: skip
  p.add_argument(
    "--backgrounds", default="solid,gradient,floor",
    help="comma-separated background kinds (default solid,gradient,floor; all: "
    "solid,gradient,floor,stripes,checker,blobs, the worlds before this option)",
  )  # fmt: skip
  p.add_argument(
    "--thickness", type=float, default=1.6,
    help="puppet part thickness multiplier (default 1.6; 1.0: the worlds before this option)",
  )  # fmt: skip
  p.add_argument(
    "--moving-camera", type=float, default=0.0,
    help="fraction of the training clips whose camera glides to another framing over the clip "
    "(default 0, the worlds before this option; held-out clips keep a fixed camera)",
  )  # fmt: skip
  p.add_argument(
    "--quality", type=int, default=0,
    help="x264 CRF of the MP4 clips (default 0: lossless, the only setting that writes the same "
    "files on every run; 12: the worlds before this option)",
  )  # fmt: skip
  p.add_argument(
    "--workers", type=int, default=0,
    help="processes rendering and encoding the items (default 0: one per CPU core of this "
    "process; the world is the same for any count)",
  )  # fmt: skip
  args = p.parse_args(argv)
  # SIGTERM as an exception, so that write_world stops its workers and removes its unfinished
  # folder (the default action would end the process with the folder and the workers left).
  signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
  t0 = time.perf_counter()
  try:
    cfg = WorldConfig(
      backgrounds=tuple(k for k in args.backgrounds.split(",") if k), thickness=args.thickness,
      seed=args.seed, videos=args.videos, images=args.images, heldout=args.heldout,
      height=args.size, width=args.size, frames=args.frames, fps=args.fps, puppets=args.puppets,
      heldout_frames=args.heldout_frames, reference_background=args.reference_background,
      moving_camera=args.moving_camera, quality=args.quality,
    )  # fmt: skip
    if hasattr(os, "sched_getaffinity"):  # the cores this process may use (Linux)
      cores = len(os.sched_getaffinity(0))
    else:
      cores = os.cpu_count() or 1
    workers = args.workers or cores
    summary = write_world(cfg, args.out, workers=workers)
  except (ValueError, FileExistsError) as e:
    print(f"make_puppet_world: error: {e}", file=sys.stderr)
    return 2
  print(
    f"wrote {args.out}: {len(summary['train_videos'])} training clips, {args.images} image pairs, "
    f"{len(summary['heldout_videos'])} held-out clips in {time.perf_counter() - t0:.1f} s"
  )
  return 0


if __name__ == "__main__":
  sys.exit(main())
