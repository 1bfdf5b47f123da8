"""Evaluating a folder of generated clips against a folder of ground-truth clips.

Clips pair by name: a video file (`.mp4`, `.gif`, ...) or a folder of frames, its suffix ignored
(`walk_03.mp4` pairs with `walk_03/` or `walk_03.gif`). Every pair must have the same frame count
and size. Per clip: PSNR, SSIM and L1 over all its frames (DisCo's frame metrics,
`o2a_jax.metrics.pixels`), LPIPS averaged over frames (`metrics.lpips`); over all clips: their
means and FVD (`metrics.fvd`, 16-frame clips).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from tqdm import tqdm

from o2a_jax.io.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_video
from o2a_jax.metrics import fvd, i3d, lpips, pixels

CLIP_SUFFIXES = (*VIDEO_SUFFIXES, ".gif")


@dataclasses.dataclass(frozen=True)
class Options:
  lpips_net: str | None = "alexnet"  # "alexnet" | "vgg16" | None (no LPIPS)
  lpips_protocol: str = "standard"  # "standard" ([-1, 1] inputs) | "disco" ([0, 1])
  lpips_weights: str | None = None  # a local copy of the pinned weight file
  fvd: bool = True
  i3d_weights: str | None = None


def clips_in(folder) -> dict[str, pathlib.Path]:
  """Clip name -> path for the videos and frame folders in `folder`."""
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise FileNotFoundError(f"{str(folder)!r} is not a folder of clips")
  out: dict[str, pathlib.Path] = {}
  for p in sorted(folder.iterdir()):
    frames = p.is_dir() and any(q.suffix.lower() in IMAGE_SUFFIXES for q in p.iterdir())
    if frames or (p.is_file() and p.suffix.lower() in CLIP_SUFFIXES):
      if p.stem in out:
        raise ValueError(
          f"{str(folder)!r} holds two clips named {p.stem!r}: {out[p.stem].name}, {p.name}"
        )
      out[p.stem] = p
  if not out:
    raise ValueError(
      f"{str(folder)!r} holds no clips (videos {', '.join(CLIP_SUFFIXES)} or frame folders)"
    )
  return out


def pair_clips(pred_dir, gt_dir) -> list[tuple[str, pathlib.Path, pathlib.Path]]:
  """(name, generated, ground truth) for every clip; unmatched names are an error."""
  pred, gt = clips_in(pred_dir), clips_in(gt_dir)
  missing, extra = sorted(set(gt) - set(pred)), sorted(set(pred) - set(gt))
  if missing or extra:
    raise ValueError(
      f"clips do not pair up: missing from --pred {missing[:10]}"
      f"{' ...' if len(missing) > 10 else ''}; not in --gt {extra[:10]}"
      f"{' ...' if len(extra) > 10 else ''}"
    )
  return [(n, pred[n], gt[n]) for n in sorted(gt)]


def evaluate_folders(
  pred_dir, gt_dir, options: Options = Options(), *, progress: bool = True
) -> dict:
  """The metrics of every clip and their summary (see the module docstring)."""
  pairs = pair_clips(pred_dir, gt_dir)
  lpips_model = i3d_model = None
  if options.lpips_net:
    lpips_model = lpips.load_lpips(options.lpips_net, options.lpips_weights)
  if options.fvd:
    i3d_model = i3d.load_i3d(options.i3d_weights)
  per_clip, generated, real = {}, [], []
  for name, p, g in tqdm(pairs, desc="evaluating", unit="clip", disable=not progress):
    a, _ = read_video(p)
    b, _ = read_video(g)
    if a.shape != b.shape:
      raise ValueError(
        f"clip {name!r}: generated {p.name} is {a.shape}, ground truth {g.name} is {b.shape}"
      )
    row = {
      "frames": int(len(a)),
      "psnr_db": pixels.psnr(a, b),
      "ssim": pixels.ssim(a, b),
      "l1": pixels.l1(a, b),
    }
    if lpips_model is not None:
      row["lpips"] = float(
        np.mean(lpips.distance(lpips_model, a, b, protocol=options.lpips_protocol))
      )
    per_clip[name] = row
    if i3d_model is not None:
      generated.append(a)
      real.append(b)
  summary = {
    k: float(np.mean([r[k] for r in per_clip.values()]))
    for k in next(iter(per_clip.values()))
    if k != "frames"
  }
  summary["clips"] = len(per_clip)
  if i3d_model is not None:
    summary["fvd"] = fvd.fvd(i3d_model, generated, real)
  lpips_inputs = "[0,1] inputs, as DisCo" if options.lpips_protocol == "disco" else "[-1,1] inputs"
  protocol = {
    "psnr_ssim_l1": "DisCo frame metrics on uint8 frames: PSNR over all pixels of a clip (peak "
    "255), SSIM with the skimage defaults on grayscale, L1 of [0,1] pixels",
    "lpips": options.lpips_net and f"LPIPS-{options.lpips_net} v0.1 ({lpips_inputs}), frame mean",
    "fvd": options.fvd
    and "I3D Kinetics-400 logits of the first 16 frames at 224x224 (bilinear), Frechet distance",
  }
  return {
    "summary": summary,
    "clips": per_clip,
    "protocol": protocol,
    "options": dataclasses.asdict(options),
  }
