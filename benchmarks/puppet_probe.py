"""Where the puppet toy model stands: one-step denoising on training batches, and the sampler.

  python benchmarks/puppet_probe.py --data /tmp/pm/data

Loads the shipped puppet model and VAE (or --model / --vae) and one stage-3 batch of the puppet
world's training records (`o2a data build official` output, --data), then reports:

- the VAE round trip (decode(encode(x))): the ceiling of anything decoded from its latents;
- for each noise level sigma: the model's velocity error on x_t = (1 - sigma) x0 + sigma noise
  (the training loss without its weights), the same with the reference latents zeroed (how much
  the model uses the reference), and the PSNR of its one-step clean estimate
  x0_hat = x_t - sigma v decoded;
- the sampler (`o2a_jax.sampling.chunk.generate_chunk`, no guidance) on the same samples and noise,
  with 1 and --steps Euler steps: one step from sigma 1 must equal the one-step estimate at
  sigma 1 (a check of the sampler's inputs), and more steps show what iterating adds.

PSNR: [-1, 1] images, peak-to-peak 2, over all pixels and frames.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--data", required=True, help="`o2a data build official` folder of a world")
  p.add_argument("--model", default=str(REPO / "assets" / "puppet_model"))
  p.add_argument("--vae", default=str(REPO / "assets" / "puppet_vae"))
  p.add_argument("--sigmas", default="0.2,0.5,0.8,1.0")
  p.add_argument("--steps", type=int, default=20, help="Euler steps of the sampler run")
  p.add_argument("--seed", type=int, default=0)
  args = p.parse_args(argv)

  import jax
  import jax.numpy as jnp
  import numpy as np
  from flax import nnx

  from o2a_jax import config_lib
  from o2a_jax.io import video as video_io
  from o2a_jax.metrics.pixels import psnr
  from o2a_jax.puppet.evaluate import load_puppet_models, pose_drawing
  from o2a_jax.sampling import chunk as pipeline
  from o2a_jax.train import step as step_lib
  from o2a_jax.train import trainer

  # The checkpoint's architecture (its patch sets the config's pose encoder too); checks the VAE.
  patch = load_puppet_models(args.model, args.vae)[0].cfg.patch_size[-1]
  config = config_lib.load_config_file(
    REPO / "configs" / "o2a.py", f"model=tiny,puppet,stage=3,vae={args.vae},patch={patch}"
  )
  config.data.source = args.data
  config.data.pose_drawing = pose_drawing(args.model)  # the batches drawn as the model trained
  config.init.checkpoint = args.model
  config.train.mesh_shape = (1, 1, 1, 1)
  config.seed = args.seed
  s = trainer.setup(config)
  local = next(trainer.data_iterator(config))
  model = step_lib.merge_model(s.graphs, s.state)
  vae = nnx.merge(s.graphs.vae, s.state.vae)
  x0, ref_lat = step_lib.encode_batch(vae, local)
  b = x0.shape[0]
  text = jnp.broadcast_to(s.state.text, (b,) + s.state.text.shape[1:])
  pose, ref_pose = jnp.asarray(local["pose_video"]), jnp.asarray(local["ref_pose"])
  ones = jnp.ones((b,), jnp.float32)
  noise = jax.random.normal(jax.random.key(args.seed), x0.shape)
  video = np.asarray(local["video"])
  decode = lambda z: np.clip(np.asarray(vae.decode(vae.denormalize(z))), -1.0, 1.0)
  per = lambda out: [round(psnr(out[i], video[i], data_range=2.0), 2) for i in range(b)]
  print(f"batch of {b} clips {video.shape[1:]}; VAE round trip {per(decode(x0))} dB")

  def velocity(x_t, sigma, ref):
    t = jnp.full((b,), sigma * 1000.0)
    return model(x_t, t, text, ref, pose, ref_pose, pose_scale=ones, token_replace=False)

  for sigma in (float(x) for x in args.sigmas.split(",")):
    x_t = (1.0 - sigma) * x0 + sigma * noise
    v = velocity(x_t, sigma, ref_lat)
    err = float(jnp.mean((v - (noise - x0)) ** 2))
    err0 = float(jnp.mean((velocity(x_t, sigma, ref_lat * 0.0) - (noise - x0)) ** 2))
    print(
      f"sigma {sigma:.2f}: velocity MSE {err:.3f} (reference zeroed {err0:.3f}); "
      f"one-step x0 estimate {per(decode(x_t - sigma * v))} dB"
    )

  for steps in (1, args.steps):
    out = []
    for i in range(b):
      ref = video_io.to_uint8(np.asarray(local["ref_image"][i, 0])[None])[0]
      frames = pipeline.generate_chunk(
        model, vae, ref, np.asarray(local["ref_mask"][i, 0, ..., 0]),
        np.asarray(local["pose_video"][i]), np.asarray(local["ref_pose"][i]),
        np.asarray(s.state.text[0]), np.asarray(s.state.text[0]), np.asarray(noise[i]),
        steps=steps, image_guidance=1.0, pose_guidance=1.0,
      )  # fmt: skip
      out.append(frames)
    print(f"sampler, {steps} Euler step(s), no guidance: {per(np.stack(out))} dB")
  return 0


if __name__ == "__main__":
  sys.exit(main())
