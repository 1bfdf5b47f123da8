"""`o2a demo`: the embedded default job, runnable on a fresh CPU machine with nothing downloaded.

Until the end-to-end puppet demo lands, this runs the tiny denoiser through the public API:
build it with seeded random weights, round-trip it through the official safetensors layout
(`save_official` -> `load_official`, checked bit-exact), then denoise a short clip with the
official flow-matching Euler schedule, pose conditioning and TokenReplace, inside one jitted
program, and report timings and output statistics.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser(
    "demo",
    help="run the embedded default (tiny model, CPU, no downloads)",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--steps", type=int, default=4, help="Euler steps (default 4)")
  p.add_argument("--frames", type=int, default=9, help="pixel frames, 4k+1 (default 9)")
  p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
  p.add_argument("--out", default=None, help="optional .npz to write the final latents to")
  p.set_defaults(func=run)


def run(args) -> int:
  from o2a_jax.convert import load_official, official_state_dict, save_official
  from o2a_jax.convert.safetensors_io import save_dict
  from o2a_jax.model import build_denoiser, preset
  from o2a_jax.sampling.schedule import sigmas

  if args.frames < 5 or (args.frames - 1) % 4:
    raise ValueError(
      f"--frames must be 4k+1 and at least 5 (TokenReplace needs 2 latent "
      f"frames), got {args.frames}"
    )
  if args.steps < 1:
    raise ValueError(f"--steps must be >= 1, got {args.steps}")
  t0 = time.perf_counter()
  model = build_denoiser(preset("tiny"), seed=args.seed)
  print(
    f"built the tiny denoiser ({model.cfg.num_layers} blocks x {model.cfg.dim} wide) in "
    f"{time.perf_counter() - t0:.1f} s on {jax.devices()[0].platform}"
  )

  with tempfile.TemporaryDirectory() as tmp:
    t0 = time.perf_counter()
    a = official_state_dict(model)  # the built weights, before the round trip
    save_official(model, f"{tmp}/official")
    model = load_official(f"{tmp}/official")
  b = official_state_dict(model)
  exact = all(np.array_equal(a[k], b[k]) for k in a)
  print(
    f"official-layout round trip: {len(a)} tensors, bit-exact={exact} "
    f"({time.perf_counter() - t0:.1f} s)"
  )
  if not exact:
    raise RuntimeError("conversion round trip was not bit-exact")

  b_, t_, h, w = 1, (args.frames - 1) // 4 + 1, 8, 12
  keys = jax.random.split(jax.random.key(args.seed), 6)
  noise = jax.random.normal(keys[0], (b_, t_, h, w, 16))
  text = jax.random.normal(keys[1], (b_, 7, model.cfg.text_dim))
  ref = jax.random.normal(keys[2], (b_, 1, h, w, 32))
  pose = jax.random.uniform(keys[3], (b_, args.frames, 8 * h, 8 * w, 3), minval=-1, maxval=1)
  ref_pose = pose[:, :1]
  sig = jnp.asarray(sigmas(args.steps))

  graphdef, state = nnx.split(model)

  # Weights and inputs are arguments, not closure constants, so XLA does not fold them.
  @jax.jit
  def step(state, x, i, cond):
    net = nnx.merge(graphdef, state)
    v = net(x, jnp.full((b_,), sig[i] * 1000.0), *cond, token_replace=True)
    x_new = x.astype(jnp.float32) + (sig[i + 1] - sig[i]) * v.astype(jnp.float32)
    return x.at[:, 2:].set(x_new[:, 2:].astype(x.dtype))  # the context frames stay clean

  x = noise
  cond = (text, ref, pose, ref_pose)
  t0 = time.perf_counter()
  for i in tqdm(range(args.steps), desc="denoise", unit="step"):
    x = step(state, x, i, cond)
  x = jax.block_until_ready(x)
  print(
    f"denoised {args.frames} frames ({t_} latent) in {args.steps} steps: "
    f"{time.perf_counter() - t0:.1f} s including compilation; "
    f"latents mean {float(x.mean()):+.4f} std {float(x.std()):.4f}, "
    f"finite={bool(jnp.isfinite(x).all())}"
  )
  if args.out:
    save_dict(args.out, {"latents": np.asarray(x)})
    print(f"wrote {args.out}")
  return 0
