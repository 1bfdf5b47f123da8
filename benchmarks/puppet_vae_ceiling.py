"""The puppet VAE's ceiling against the aligned copy baseline, at any frame size.

  python benchmarks/puppet_vae_ceiling.py --size 64 [--vae assets/puppet_vae] [--clips 16]

Renders held-out clips 0..clips-1 of the puppet world (seed 0, `WorldConfig` defaults, 17
frames) at --size pixels and prints the mean PSNR of copying the first frame to every frame (the
aligned copy-reference baseline) and of the VAE round trip decode(encode(x)) (float, [-1, 1],
clamped), and their difference: issue 17 asks the VAE to be at least 3 dB above copying. The VAE
is fully convolutional, so a VAE trained at 64 px can be measured at 128.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--size", type=int, default=64, help="frame height and width (multiple of 16)")
  p.add_argument("--vae", default=None, help="VAE folder (default assets/puppet_vae)")
  p.add_argument("--clips", type=int, default=16, help="held-out clips (default 16)")
  args = p.parse_args(argv)

  from o2a_jax.convert import load_vae
  from o2a_jax.metrics import pixels
  from o2a_jax.puppet import evaluate as E
  from o2a_jax.puppet import vae_train
  from o2a_jax.puppet.world import WorldConfig, make_video

  cfg = WorldConfig(seed=0, heldout=args.clips, frames=17, height=args.size, width=args.size)
  clips = [make_video(cfg, k, heldout=True).frames for k in range(args.clips)]
  copy = float(np.mean([pixels.psnr(np.broadcast_to(c[0], c.shape), c) for c in clips]))
  vae = vae_train.reconstruction_psnr(load_vae(args.vae or E.VAE_DIR), clips)
  print(json.dumps({"size": args.size, "clips": args.clips, "copy_psnr_db": copy,
                    "vae_psnr_db": vae, "vae_minus_copy_db": vae - copy}))  # fmt: skip
  return 0


if __name__ == "__main__":
  sys.exit(main())
