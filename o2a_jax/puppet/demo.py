"""`o2a demo`: animate a held-out puppet with the shipped toy model, on CPU, nothing downloaded.

Loads the tiny One-to-All denoiser trained on the puppet world through stages 1-3
(`assets/puppet_model`, see its README) and the small puppet VAE whose latent space it was
trained in (`assets/puppet_vae`; checked by sha256), renders a held-out puppet (an identity
neither model saw) performing a motion, and animates it from a misaligned reference: by default
a half-body still of the puppet in another framing, in front of the same background, drives a
full-body motion. The ground truth is exact (the generator renders the same puppet along the same
poses), so the demo reports PSNR and SSIM of the result against it, next to two baselines
(copying the reference, and the pose-guided translation of the reference). Writes to --out:

  result.gif, result.mp4          the animation (upscaled x--scale for viewing)
  side_by_side.gif/.mp4           [driving pose | result | ground truth]
  strip.png                       the reference, then five frames as [pose; result; ground truth]
  reference.png                   the reference image the model was given
  metrics.json                    the figures printed at the end

The latent statistics are the puppet VAE's own (its config.json), as in training; the prompt is
the empty prompt, zeros as in training.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import time

import numpy as np

from o2a_jax.io.output_paths import check_output
from o2a_jax.puppet import evaluate as E  # JAX-free at import: `o2a --help` stays light

STRIP_FRAMES = 5  # frames in strip.png
DEFAULT_INDEX = 15  # held-out clip: a walking full-body puppet driven from a half-body still


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser(
    "demo",
    help="animate a held-out puppet with the shipped toy model (CPU, about a minute)",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--out", default="o2a_demo_out", help="output folder (default ./o2a_demo_out)")
  p.add_argument("--index", type=int, default=DEFAULT_INDEX, help="held-out clip 0-15")
  p.add_argument("--frames", type=int, default=29, help="frames to animate (default 29)")
  p.add_argument("--chunk", type=int, default=17, help="frames per chunk, 4k+1 >= 9 (17)")
  p.add_argument("--steps", type=int, default=E.STEPS, help=f"Euler steps per chunk ({E.STEPS})")
  p.add_argument("--shift", type=float, default=E.SHIFT, help=f"sampling shift ({E.SHIFT:g})")
  p.add_argument("--image-guidance", type=float, default=E.IMAGE_GUIDANCE,
                 help=f"reference CFG ({E.IMAGE_GUIDANCE:g})")  # fmt: skip
  p.add_argument("--pose-guidance", type=float, default=E.POSE_GUIDANCE,
                 help=f"pose CFG ({E.POSE_GUIDANCE:g})")  # fmt: skip
  p.add_argument("--aligned", action="store_true", help="use the clip's first frame as reference")
  p.add_argument("--scale", type=int, default=4, help="upscale factor of the written videos (4)")
  p.add_argument("--seed", type=int, default=42, help="noise seed (default 42)")
  p.add_argument("--model", default=None, help="denoiser folder (default assets/puppet_model)")
  p.add_argument("--vae", default=None, help="VAE folder (default assets/puppet_vae)")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out folder")
  p.set_defaults(func=run)


def _up(video: np.ndarray, k: int) -> np.ndarray:
  return video if k == 1 else video.repeat(k, axis=-3).repeat(k, axis=-2)


def viewing_poses(poses: list[dict], height: int, width: int, k: int) -> np.ndarray:
  """The driving poses drawn for people at k times the frame size, uint8 (F,kH,kW,3)
  (`pose.render.viewing`: drawn at the shown size, not the model's 64-px input upscaled)."""
  from o2a_jax.pose.render import viewing

  return np.stack([viewing(p, height * k, width * k) for p in poses])


def _label(img: np.ndarray, text: str, top: int, k: int, above: bool = True) -> None:
  """Writes `text` in black on white near the top of the row starting at pixel `top` (in place;
  on the reference itself a white box behind it)."""
  import cv2

  scale = 0.12 * k
  (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
  x, y = 2 * k, top + 2 * k + th
  if above:
    img[top : y + base + k, : x + tw + 2 * k] = 255
  cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def strip(image, driving, video, gt, k: int, n: int = STRIP_FRAMES) -> np.ndarray:
  """A still of the demo, uint8: the reference, then `n` evenly spaced frames as columns of
  [driving pose; result; ground truth], at k times the frame size."""
  f, h, w = video.shape[:3]
  idx = np.linspace(0, f - 1, n).round().astype(int)
  pad = np.full((k * h, 2 * k, 3), 255, np.uint8)
  ref = np.concatenate([_up(image[None], k)[0], np.full((2 * k * h, k * w, 3), 255, np.uint8)])
  _label(ref, "reference", 0, k)
  _label(ref, "result", k * h, k, above=False)
  _label(ref, "ground truth", 2 * k * h, k, above=False)
  cols = [ref]
  poses = viewing_poses([driving[i] for i in idx], h, w, k)
  for j, i in enumerate(idx):
    col = np.concatenate([poses[j], _up(video[i][None], k)[0], _up(gt[i][None], k)[0]])
    cols += [np.concatenate([pad] * 3), col]
  return np.concatenate(cols, axis=1)


def run(args) -> int:
  from o2a_jax.io import video as video_io
  from o2a_jax.metrics import pixels

  if args.frames < 9:
    raise ValueError(f"--frames must be at least 9, got {args.frames}")
  if args.chunk < 9 or (args.chunk - 1) % 4:
    raise ValueError(f"--chunk must be 4k+1 and at least 9, got {args.chunk}")
  if args.steps < 1 or args.scale < 1:
    raise ValueError("--steps and --scale must be >= 1")
  if not 0 <= args.index < 16:
    raise ValueError(f"--index must be a held-out clip in 0-15, got {args.index}")
  progress = not args.quiet
  out = pathlib.Path(args.out)
  check_output(out, overwrite=args.overwrite, folder=True)
  t_start = time.perf_counter()

  t0 = time.perf_counter()
  model, vae = E.load_puppet_models(args.model or E.MODEL_DIR, args.vae or E.VAE_DIR)
  drawing = E.pose_drawing(args.model or E.MODEL_DIR)
  t_load = time.perf_counter() - t0
  print(f"loaded the puppet model and VAE in {t_load:.1f} s")

  t0 = time.perf_counter()
  case = E.heldout_case(args.index, frames=args.frames)
  inputs, image, ref_pose, driving = E.prepare_case(
    case, aligned=args.aligned, drawing=drawing, progress=progress
  )
  kind = "aligned (first frame)" if args.aligned else (
    f"misaligned ({case.meta['reference']['framing']['kind']} framing)")  # fmt: skip
  print(
    f"held-out puppet {case.meta['puppet_index']} ({case.meta['motion']}, "
    f"{case.meta['framing']['kind']} framing, {args.frames} frames), reference {kind}; "
    f"rendered in {time.perf_counter() - t0:.1f} s"
  )

  t0 = time.perf_counter()
  video = E.animate(
    model, vae, inputs, chunk=args.chunk, steps=args.steps, shift=args.shift,
    image_guidance=args.image_guidance, pose_guidance=args.pose_guidance, seed=args.seed,
    progress=progress,
  )  # fmt: skip
  t_gen = time.perf_counter() - t0

  gt = case.frames
  copy = np.broadcast_to(image, gt.shape).copy()
  moved = E.translate_baseline(image, ref_pose, driving, len(gt))
  figures = {
    "model": {"psnr_db": pixels.psnr(video, gt), "ssim": pixels.ssim(video, gt)},
    "copy_reference": {"psnr_db": pixels.psnr(copy, gt), "ssim": pixels.ssim(copy, gt)},
    "translated_reference": {"psnr_db": pixels.psnr(moved, gt), "ssim": pixels.ssim(moved, gt)},
  }

  fps = float(case.meta.get("fps", 16.0))
  k = args.scale
  both = video_io.side_by_side(viewing_poses(driving[: len(video)], *gt.shape[1:3], k),
                               _up(video, k), _up(gt, k))  # fmt: skip
  files = {
    "result.gif": _up(video, k),
    "result.mp4": _up(video, k),
    "side_by_side.gif": both,
    "side_by_side.mp4": both,
    "reference.png": _up(image[None], k),
    "strip.png": strip(image, driving, video, gt, k)[None],
  }
  out.mkdir(parents=True, exist_ok=True)  # only now: an early error leaves no empty folder
  for name, frames in files.items():
    video_io.write_video(out / name, frames, fps)
  meta = {
    "index": args.index,
    "reference": kind,
    "frames": args.frames,
    "chunk": args.chunk,
    "steps": args.steps,
    "shift": args.shift,
    "image_guidance": args.image_guidance,
    "pose_guidance": args.pose_guidance,
    "seed": args.seed,
    "pose_drawing": drawing,
    "seconds": {"load": t_load, "generate": t_gen, "total": time.perf_counter() - t_start},
    "metrics": figures,
    "ssim": "skimage defaults: grayscale (ITU-R 601), 7x7 uniform window, sample covariance",
  }
  tmp = out / "metrics.json.tmp"
  tmp.write_text(json.dumps(meta, indent=1))
  os.replace(tmp, out / "metrics.json")

  print(f"animated {args.frames} frames in {t_gen:.1f} s; wrote to {out.absolute()}:")
  for name in (*files, "metrics.json"):
    print(f"  {out / name}")
  print("PSNR / SSIM against the ground truth:")
  for name, f in figures.items():
    print(f"  {name:22s} {f['psnr_db']:6.2f} dB  {f['ssim']:.4f}")
  print(f"total {time.perf_counter() - t_start:.1f} s")
  return 0
