"""Trains the small puppet VAE (the project's Wan VAE architecture, narrow channels) on CPU.

  python scripts/make_puppet_world.py --out /tmp/puppet_world --videos 96 --images 0 --heldout 8
  python scripts/train_puppet_vae.py --world /tmp/puppet_world --out assets/puppet_vae

(the exact commands of the shipped weights are in assets/puppet_vae/README.md)

Trains on random clips of the world's training videos (lossless ground-truth frames under `gt/`),
reports the reconstruction PSNR on the held-out clips (held-out puppets) before and after training,
computes the per-channel latent mean/std, and writes a diffusers `AutoencoderKLWan` folder
(`o2a_jax.convert.load_vae` reads it; the statistics are in its `config.json`) with a
`training.json` holding the command, the settings, the metrics and the loss log.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
  from o2a_jax.convert.vae import save_vae
  from o2a_jax.puppet import vae_train as T

  d = T.TrainConfig()
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--world", required=True, help="puppet world folder (make_puppet_world.py)")
  p.add_argument("--out", required=True, help="output VAE folder (replaced if it exists)")
  p.add_argument("--steps", type=int, default=d.steps)
  p.add_argument("--batch", type=int, default=d.batch)
  p.add_argument("--frames", type=int, default=d.frames, help="frames per training clip, 4k+1")
  p.add_argument("--crop", type=int, default=32, help="random square crop size (0: full frames)")
  p.add_argument("--lr", type=float, default=d.lr)
  p.add_argument("--kl-weight", type=float, default=d.kl_weight)
  p.add_argument("--b2", type=float, default=d.b2, help="Adam second-moment decay")
  p.add_argument("--recon", default=d.recon, help="reconstruction loss: mse, l1 or mse+l1")
  p.add_argument("--no-sample", action="store_true", help="decode the posterior mean, not a sample")
  p.add_argument("--warmup", type=int, default=d.warmup)
  p.add_argument(
    "--consistency", type=float, default=d.consistency,
    help="weight of the still-clip latent-consistency term (puppet.vae_train.loss_fn; 0 = off)",
  )  # fmt: skip
  p.add_argument("--init", default="", help="continue from this VAE folder (else a fresh init)")
  p.add_argument(
    "--parts", choices=T.TRAIN_PARTS, default=d.parts,
    help="what trains: all, or decoder (with --init: the encoder, its latent space and the "
    "latent statistics stay those of --init, so a denoiser trained on them stays valid)",
  )  # fmt: skip
  p.add_argument("--base-dim", type=int, default=d.base_dim)
  p.add_argument(
    "--dim-mult", default=",".join(map(str, d.dim_mult)),
    help="channel multipliers per stage, comma-separated; n stages compress 2^(n-1)x in space "
    "(1,2,2,2: 8x as Wan2.1; 1,2,2: 4x)",
  )  # fmt: skip
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--eval-frames", type=int, default=9, help="frames per held-out clip (4k+1)")
  args = p.parse_args(argv)
  if (args.frames - 1) % 4 or (args.eval_frames - 1) % 4:
    print("train_puppet_vae: error: --frames and --eval-frames must be 4k+1", file=sys.stderr)
    return 2

  try:
    dim_mult = tuple(int(u) for u in args.dim_mult.split(","))
    if min(dim_mult) < 1:
      raise ValueError("every multiplier must be >= 1")
    T.temporal_downsample(len(dim_mult) - 1)
  except ValueError as e:
    print(f"train_puppet_vae: error: --dim-mult {args.dim_mult!r}: {e}", file=sys.stderr)
    return 2

  if args.parts != "all" and not args.init:
    print("train_puppet_vae: error: --parts decoder needs --init (the encoder)", file=sys.stderr)
    return 2
  try:
    cfg = T.TrainConfig(
      base_dim=args.base_dim, dim_mult=dim_mult, lr=args.lr, steps=args.steps, batch=args.batch,
      frames=args.frames, kl_weight=args.kl_weight, seed=args.seed, b2=args.b2,
      recon=args.recon, sample=not args.no_sample, warmup=args.warmup,
      consistency=args.consistency, parts=args.parts,
    )  # fmt: skip
  except ValueError as e:
    print(f"train_puppet_vae: error: {e}", file=sys.stderr)
    return 2

  from o2a_jax.puppet.world import load_gt

  world = pathlib.Path(args.world)
  train_files = sorted((world / "gt").glob("v*.npz"))
  held_files = sorted((world / "gt").glob("h?????.npz"))  # clips, not their _ref/_f0 images
  if not train_files or not held_files:
    print(f"train_puppet_vae: error: {world}/gt has no v*.npz or h*.npz clips", file=sys.stderr)
    return 2
  videos = [load_gt(f)["frames"] for f in train_files]
  held = [load_gt(f)["frames"][: args.eval_frames] for f in held_files]
  if args.init:
    from o2a_jax.convert import load_vae

    vae = load_vae(args.init)
    if (vae.cfg.base_dim, tuple(vae.cfg.dim_mult)) != (cfg.base_dim, cfg.dim_mult):
      print(
        f"train_puppet_vae: error: --init has base_dim {vae.cfg.base_dim}, dim_mult "
        f"{tuple(vae.cfg.dim_mult)}; give the same --base-dim and --dim-mult",
        file=sys.stderr,
      )
      return 2
  else:
    vae = T.new_vae(cfg)
  t0 = time.perf_counter()
  psnr_init = T.reconstruction_psnr(vae, held)
  cons_init = T.still_consistency(vae, held)
  print(
    f"held-out PSNR at the start: {psnr_init:.2f} dB ({len(held)} clips); still-clip latent "
    f"consistency {cons_init:.4f}"
  )
  batches = T.clip_batches(videos, cfg.batch, cfg.frames, cfg.seed, crop=args.crop or None)
  t1 = time.perf_counter()
  log = T.train(vae, batches, cfg)
  train_s = time.perf_counter() - t1
  psnr_final = T.reconstruction_psnr(vae, held)
  train_clips = [v[: args.eval_frames] for v in videos[:32]]
  psnr_train = T.reconstruction_psnr(vae, train_clips)
  if args.parts == "all":
    mean, std = T.latent_stats(vae, train_clips)
  else:  # the encoder did not change: its statistics are the ones the denoiser normalises with
    from o2a_jax.convert.vae import read_latent_stats

    mean, std = (list(v) for v in read_latent_stats(args.init))
  cons_final = T.still_consistency(vae, held)
  cons_norm = T.still_consistency(vae, held, latents_std=std)
  print(f"held-out PSNR after training: {psnr_final:.2f} dB; training clips {psnr_train:.2f} dB")
  print(
    f"still-clip latent consistency (held-out, mean squared difference of the first latent frame "
    f"and the others): {cons_final:.4f}, {cons_norm:.3f} in normalised units"
  )
  extra = {
    "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
    "config": dataclasses.asdict(cfg),
    "crop": args.crop,
    "world": json.loads((world / "world.json").read_text())["config"],
    "init": args.init or None,
    "heldout_psnr_db": {"start": psnr_init, "trained": psnr_final},
    "train_clips_psnr_db": psnr_train,
    "heldout_still_consistency": {
      "start": cons_init,
      "trained": cons_final,
      "trained_normalised": cons_norm,
    },
    "eval": f"{len(held)} held-out clips x {args.eval_frames} frames, decode(encode(x)) clamped",
    "train_seconds": train_s,
    "total_seconds": time.perf_counter() - t0,
    "log": log,
  }
  save_vae(vae, args.out, latents_mean=mean, latents_std=std, extra=extra)
  print(f"wrote {args.out} (train {train_s:.0f} s)")
  print("latents_mean", np.round(mean, 3).tolist())
  print("latents_std", np.round(std, 3).tolist())
  return 0


if __name__ == "__main__":
  sys.exit(main())
