"""Puppet-world evaluation: the shipped toy model vs baselines and ablations on held-out puppets.

  python benchmarks/puppet_eval.py --cases 8 --json /tmp/puppet_eval.json

Held-out clips 0..cases-1 of the puppet world (seed 0, 64x64, puppets and motions neither the VAE
nor the denoiser saw), rendered on the fly with exact ground truth. Conditions:

  aligned      the reference is the clip's first frame (and its pose); one chunk of --frames
  misaligned   the reference is the same puppet in a still pose with another framing (full /
               half body / close-up, another scale and offset), in front of the clip's background
               (--reference-background same, the default; `new`: an independent one); one chunk
  long         misaligned, --long-frames frames generated as two chunks of --frames (the second
               TokenReplace-conditioned on the last 5 frames of the first)

Methods: the model (the demo's sampler: guidance 1 / 1, 3 Euler steps, shift 7, each a flag);
`vae` (aligned only): the clip's own VAE round trip, the ceiling of the model; `copy`: every
frame is the reference image; `translate`: the pose-guided translation of the reference
(`o2a_jax.pose.translate_reference`) onto each driving frame. Ablations (misaligned): `no_ref`:
the reference and mask replaced by the black image of the training's reference drop, image
guidance off (the extractor sees nothing of the puppet); `no_pose`: pose scale 0 and pose guidance
off (the pose branch adds nothing).

Metrics (`o2a_jax.metrics`): PSNR over all pixels and frames of a clip, SSIM with the
scikit-image defaults (grayscale, 7x7 uniform window), LPIPS (--lpips, AlexNet by default, [-1,1]
inputs; weights from the `eval` extra) averaged over frames; means over clips; all frames count,
the first one included. The end lists the toy's acceptance checks (issue 17) as PASS/FAIL and
the JSON holds them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def acceptance(table: dict) -> dict[str, bool]:
  """The toy's acceptance checks on the mean figures (PSNR dB, SSIM) of `table`."""

  def f(cond, method):
    return table[cond][method]["psnr_db"], table[cond][method]["ssim"]

  out = {}
  if "vae" in table["aligned"]:
    out["VAE round trip >= aligned copy + 3 dB"] = (
      f("aligned", "vae")[0] >= f("aligned", "copy")[0] + 3.0
    )
  for cond in ("misaligned", "long"):
    m = f(cond, "model")
    for base in ("copy", "translate"):
      b = f(cond, base)
      ok = m[0] >= b[0] + 2 and m[1] >= b[1] + 0.1
      out[f"{cond}: model >= {base} + 2 dB and + 0.1 SSIM"] = ok
  m, c = f("aligned", "model"), f("aligned", "copy")
  out["aligned: model > copy in PSNR and SSIM"] = m[0] > c[0] and m[1] > c[1]
  mis = table["misaligned"]
  for ab, drop in (("no_ref", 2.0), ("no_pose", 1.0)):
    if ab in mis:
      out[f"ablation {ab} drops PSNR >= {drop:g} dB"] = (
        mis["model"]["psnr_db"] - mis[ab]["psnr_db"] >= drop
      )
  return out


def main(argv=None) -> int:
  from o2a_jax.metrics import pixels
  from o2a_jax.puppet import evaluate as E

  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--cases", type=int, default=8, help="held-out clips (default 8, at most 16)")
  p.add_argument("--frames", type=int, default=17, help="chunk frames (default 17)")
  p.add_argument("--long-frames", type=int, default=29, help="two-chunk clip frames (29)")
  p.add_argument(
    "--steps", type=int, default=E.STEPS, help=f"Euler steps per chunk (default {E.STEPS})"
  )
  p.add_argument("--model", default=str(E.MODEL_DIR))
  p.add_argument("--vae", default=str(E.VAE_DIR))
  p.add_argument("--no-ablations", action="store_true")
  p.add_argument(
    "--lpips", default="alexnet", choices=("alexnet", "vgg16", "none"), help="LPIPS trunk"
  )
  p.add_argument(
    "--int8", action="store_true", help="the denoiser's transformer linears as int8 (weight-only)"
  )
  p.add_argument(
    "--reference-background", choices=("same", "new"), default="same",
    help="misaligned references in front of the clip's scene (same, default) or of an "
    "independent background (new: the figures recorded before this option)",
  )  # fmt: skip
  p.add_argument(
    "--image-guidance",
    type=float,
    default=E.IMAGE_GUIDANCE,
    help=f"reference CFG scale (default {E.IMAGE_GUIDANCE}, the demo's)",
  )
  p.add_argument(
    "--pose-guidance",
    type=float,
    default=E.POSE_GUIDANCE,
    help=f"pose CFG scale (default {E.POSE_GUIDANCE}, the demo's)",
  )
  p.add_argument(
    "--shift", type=float, default=E.SHIFT, help=f"sampling shift (default {E.SHIFT}, the demo's)"
  )
  p.add_argument("--json", default=None, help="write the figures here")
  args = p.parse_args(argv)
  if args.long_frames <= args.frames:
    print("puppet_eval: error: --long-frames must exceed --frames (two chunks)", file=sys.stderr)
    return 2

  t_all = time.perf_counter()
  model, vae = E.load_puppet_models(args.model, args.vae)
  drawing = E.pose_drawing(args.model)  # the model's inputs are drawn as in its training
  lpips_model = None
  if args.lpips != "none":
    from o2a_jax.metrics import lpips

    lpips_model = lpips.load_lpips(args.lpips)
  if args.int8:
    from o2a_jax.model import quantize

    print(f"int8: {len(quantize.quantize(model))} stacked linear groups quantised")
  scores: dict[str, dict[str, list]] = {}

  def add(cond, method, video, gt):
    d = scores.setdefault(cond, {}).setdefault(method, [])
    lp = float("nan")
    if lpips_model is not None:
      lp = float(np.mean(lpips.distance(lpips_model, video, gt)))
    d.append((pixels.psnr(video, gt), pixels.ssim(video, gt), lp))

  def baselines(cond, image, ref_pose, driving, gt):
    add(cond, "copy", np.broadcast_to(image, gt.shape).copy(), gt)
    add(cond, "translate", E.translate_baseline(image, ref_pose, driving, len(gt)), gt)

  gen = dict(chunk=args.frames, steps=args.steps, shift=args.shift, progress=False)
  guide = dict(image_guidance=args.image_guidance, pose_guidance=args.pose_guidance)
  for k in range(args.cases):
    t0 = time.perf_counter()
    full = E.heldout_case(
      k, frames=args.long_frames, reference_background=args.reference_background
    )
    short = E.PuppetCase(full.frames[: args.frames], full.kp133[: args.frames], full.ref_frame,
                         full.ref_kp133, full.meta)  # fmt: skip
    gt = short.frames
    inp, image, rp, drv = E.prepare_case(short, aligned=True, drawing=drawing)
    add("aligned", "model", E.animate(model, vae, inp, **guide, **gen), gt)
    baselines("aligned", image, rp, drv, gt)
    add("aligned", "vae", E.vae_round_trip(vae, gt), gt)
    inp, image, rp, drv = E.prepare_case(short, aligned=False, drawing=drawing)
    add("misaligned", "model", E.animate(model, vae, inp, **guide, **gen), gt)
    baselines("misaligned", image, rp, drv, gt)
    if not args.no_ablations:
      v = E.animate(model, vae, inp, drop_reference=True, image_guidance=1.0,
                    pose_guidance=args.pose_guidance, **gen)  # fmt: skip
      add("misaligned", "no_ref", v, gt)
      v = E.animate(model, vae, inp, pose_scale=0.0, pose_guidance=1.0,
                    image_guidance=args.image_guidance, **gen)  # fmt: skip
      add("misaligned", "no_pose", v, gt)
    inp, image, rp, drv = E.prepare_case(full, aligned=False, drawing=drawing)
    add("long", "model", E.animate(model, vae, inp, **guide, **gen), full.frames)
    baselines("long", image, rp, drv, full.frames)
    m = full.meta
    print(
      f"case {k}: {m['motion']}, {m['framing']['kind']} <- {m['reference']['framing']['kind']}: "
      + ", ".join(f"{c} {scores[c]['model'][-1][0]:.2f} dB" for c in scores)
      + f" ({time.perf_counter() - t0:.0f} s)",
      flush=True,
    )

  table = {
    cond: {
      method: {
        "psnr_db": float(np.mean([a for a, _, _ in v])),
        "ssim": float(np.mean([b for _, b, _ in v])),
        "lpips": float(np.mean([c for _, _, c in v])),
        "n": len(v),
      }
      for method, v in methods.items()
    }
    for cond, methods in scores.items()
  }
  print(f"\nheld-out clips: {args.cases}; steps {args.steps}; chunk {args.frames} frames; long "
        f"{args.long_frames} frames (two chunks)")  # fmt: skip
  print(f"{'condition':12s} {'method':10s} {'PSNR dB':>8s} {'SSIM':>7s} {'LPIPS':>7s}")
  for cond, methods in table.items():
    for method, f in methods.items():
      print(f"{cond:12s} {method:10s} {f['psnr_db']:8.2f} {f['ssim']:7.4f} {f['lpips']:7.4f}")
  mis = table["misaligned"]
  for ab in ("no_ref", "no_pose"):
    if ab in mis:
      print(
        f"ablation {ab}: PSNR {mis[ab]['psnr_db'] - mis['model']['psnr_db']:+.2f} dB, "
        f"SSIM {mis[ab]['ssim'] - mis['model']['ssim']:+.4f} vs the model"
      )
  checks = acceptance(table)
  print("acceptance (issue 17):")
  for name, ok in checks.items():
    print(f"  {'PASS' if ok else 'FAIL'}  {name}")
  seconds = time.perf_counter() - t_all
  print(f"total {seconds:.0f} s")
  if args.json:
    out = {
      "args": vars(args),
      "pose_drawing": drawing,
      "table": table,
      "acceptance": checks,
      "per_case": {c: {m: v for m, v in ms.items()} for c, ms in scores.items()},
      "seconds": seconds,
    }
    tmp = args.json + ".tmp"
    pathlib.Path(tmp).write_text(json.dumps(out, indent=1))
    os.replace(tmp, args.json)
  return 0


if __name__ == "__main__":
  sys.exit(main())
