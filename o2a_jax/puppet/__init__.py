"""The puppet toy, in one place: a synthetic world, its small VAE, evaluation and `o2a demo`.

It runs the project's own denoiser, VAE, data pipeline, trainer and sampler on a seeded,
synthetic animation world with exact pose ground truth:
- the world: `spec.PuppetSpec` (identity), `motion.make_motion` (joint angles over time),
  `skeleton` (kinematics and COCO-WholeBody keypoints), `draw` (frames) and `world` (the writer
  of the official on-disk training layout);
- `vae_train`: training a small Wan VAE from scratch on it;
- `evaluate`: held-out evaluation (PSNR/SSIM against the exact ground truth) and long videos;
- `demo`: the `o2a demo` command.

The toy may import anything; only the entry points (`o2a_jax.cli`, `configs/`) import it.
"""
