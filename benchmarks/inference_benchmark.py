"""Inference benchmark: seconds per denoising step and per video, random weights.

Shapes (official sampling): 1.3B at 81 frames 480x832, 14B at 81 frames 720x1280, 30 Euler steps,
three-pass guidance (the three passes are one batched model call per step), bf16. Everything is
built from a fresh clone with random weights (no downloads), so it can run beside other
implementations on the same machine.

Per video = VAE encoding of the reference, mask and black frame + `steps` x the measured step
time + VAE decoding of the chunk (one 81-frame chunk, i.e. what one `generate_chunk` call does).
The step time is measured on the jitted denoising loop (`o2a_jax.sampling.chunk._denoise`, one
`fori_loop`) over `--timed-steps` steps after a compiling warm-up run; encode/decode are timed
after their own warm-up.

Without a GPU the default is a reduced size (printed in the output): 2 main blocks (1 extractor
block, 1 pose block), 9 frames at 96x160, 2 timed steps; the real widths and head counts are kept.
`--full` forces the full size; `--layers/--frames/--height/--width` set the size explicitly.

  python benchmarks/inference_benchmark.py                    # full size on GPU, reduced on CPU
  python benchmarks/inference_benchmark.py --preset 1.3b --layers 4 --frames 17
"""

from __future__ import annotations

import argparse
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.convert.official import abstract_model
from o2a_jax.model import preset
from o2a_jax.sampling import guidance
from o2a_jax.sampling.chunk import _denoise
from o2a_jax.sampling.schedule import sigmas
from o2a_jax.vae import normalize
from o2a_jax.vae.model import VAEConfig, WanVAE, randomize

FULL = {
  "1.3b": dict(frames=81, height=480, width=832),
  "14b": dict(frames=81, height=720, width=1280),
}
REDUCED = dict(frames=9, height=96, width=160, layers=2, timed_steps=2)


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--preset", choices=("1.3b", "14b", "both"), default="both")
  p.add_argument("--full", action="store_true", help="full size even without a GPU")
  p.add_argument("--layers", type=int, default=None, help="main blocks (default: the preset's)")
  p.add_argument("--frames", type=int, default=None)
  p.add_argument("--height", type=int, default=None)
  p.add_argument("--width", type=int, default=None)
  p.add_argument("--steps", type=int, default=30, help="steps of one video (default 30)")
  p.add_argument("--timed-steps", type=int, default=None, help="steps actually run and timed")
  p.add_argument("--passes", type=int, choices=(1, 2, 3), default=3, help="guidance passes")
  p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
  p.add_argument("--attn-impl", default="xla")
  p.add_argument("--text-len", type=int, default=512)
  p.add_argument(
    "--no-vae", action="store_true", help="time the denoising loop only (random ref latents)"
  )
  p.add_argument("--json", default=None, help="also write the results to this JSON file")
  return p.parse_args(argv)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fill(key, shape, dtype):
  if len(shape) < 2:  # norms, biases, tables: ones (keeps activations well scaled)
    return jnp.ones(shape, dtype)
  fan_in = max(1, int(np.prod(shape[:-1])) // (shape[0] if len(shape) > 2 else 1))
  return (jax.random.normal(key, shape, jnp.float32) / np.sqrt(fan_in)).astype(dtype)


def random_denoiser(cfg, seed: int = 0):
  """A denoiser with random weights, built from its abstract structure with one jitted fill per
  parameter shape (much faster than eager NNX initialisation at these sizes)."""
  graphdef, state = nnx.split(abstract_model(cfg))
  key = jax.random.key(seed)
  for i, (_, var) in enumerate(sorted(state.flat_state(), key=lambda kv: str(kv[0]))):
    v = var.get_value()
    var.set_value(_fill(jax.random.fold_in(key, i), tuple(v.shape), jnp.dtype(v.dtype)))
  return nnx.merge(graphdef, state)


def _time(fn):
  t = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t


def bench(name: str, args) -> dict:
  gpu = jax.default_backend() != "cpu"
  reduced = not (gpu or args.full)
  size = dict(FULL[name])
  cfg_over = {}
  timed = args.timed_steps or (REDUCED["timed_steps"] if reduced else args.steps)
  if reduced:
    size.update({k: REDUCED[k] for k in ("frames", "height", "width")})
    cfg_over.update(num_layers=REDUCED["layers"], ref_layers=1, pose_layers=1)
  for k in ("frames", "height", "width"):
    if getattr(args, k) is not None:
      size[k] = getattr(args, k)
  if args.layers is not None:
    n = args.layers
    cfg_over.update(num_layers=n, ref_layers=max(1, min(n - 1, 14)), pose_layers=min(1, n - 1))
  f, hh, ww = size["frames"], size["height"], size["width"]
  if (f - 1) % 4 or hh % 16 or ww % 16:
    raise SystemExit(f"frames must be 4k+1 and height/width multiples of 16, got {f}x{hh}x{ww}")
  cfg = preset(name, dtype=args.dtype, param_dtype=args.dtype, attn_impl=args.attn_impl, **cfg_over)
  t_lat, h, w = (f - 1) // 4 + 1, hh // 8, ww // 8
  label = "REDUCED SIZE (no GPU)" if reduced else "full size"
  print(
    f"[{name}] {label}: {cfg.num_layers} blocks (extractor {cfg.ref_layers}, pose "
    f"{cfg.pose_layers}), width {cfg.dim}, {f} frames {hh}x{ww}, {args.passes} passes, "
    f"{args.dtype}, attention {cfg.attn_impl}, device {jax.devices()[0].device_kind}",
    flush=True,
  )

  t0 = time.perf_counter()
  model = random_denoiser(cfg, seed=0)
  vae = None if args.no_vae else randomize(WanVAE(VAEConfig(), dtype=jnp.dtype(args.dtype)), seed=0)
  build_s = time.perf_counter() - t0

  k = jax.random.split(jax.random.key(0), 4)
  pose = jax.random.uniform(k[0], (1, f, hh, ww, 3), minval=-1, maxval=1)
  ref_pose = pose[:, :1]
  text = jax.random.normal(k[1], (1, args.text_len, cfg.text_dim), jnp.float32)
  image = jax.random.uniform(k[2], (1, 1, hh, ww, 3), minval=-1, maxval=1)
  x = jax.random.normal(k[3], (1, t_lat, h, w, 16), jnp.float32)

  def encode():  # reference, mask and black frame, as generate_chunk does
    return [normalize(vae.encode(image)) for _ in range(3)]

  if args.no_vae:
    encode_warm = encode_s = None
    lat = jax.random.normal(k[2], (1, 1, h, w, 16), jnp.float32)
  else:
    encode_warm = _time(encode)
    encode_s = _time(encode)
    lat = encode()[0]
  ref_latents = jnp.concatenate([lat, lat], -1)
  ref, pose_b, rpose, text_b, scales = guidance.pass_inputs(
    args.passes, ref_latents, ref_latents, pose, ref_pose, text, text, 1.0
  )
  graphdef, state = nnx.split(model)
  sig = jnp.asarray(sigmas(timed))
  run = lambda: _denoise(
    graphdef, state, x, sig, ref, pose_b, rpose, text_b, scales, n=args.passes,
    token_replace=False, image_guidance=2.5, pose_guidance=1.5,
  )  # fmt: skip
  denoise_warm = _time(run)
  denoise_s = _time(run)
  step_s = denoise_s / timed
  if args.no_vae:
    decode_warm = decode_s = None
    video_s = None
  else:
    decode_warm = _time(lambda: vae.decode(x))
    decode_s = _time(lambda: vae.decode(x))
    video_s = encode_s + args.steps * step_s + decode_s
  res = dict(
    preset=name, reduced=reduced, layers=cfg.num_layers, frames=f, height=hh, width=ww,
    passes=args.passes, dtype=args.dtype, device=jax.devices()[0].device_kind,
    build_s=build_s, step_s=step_s, video_s=video_s, steps=args.steps, timed_steps=timed,
    encode_s=encode_s, decode_s=decode_s, compile_denoise_s=denoise_warm - denoise_s,
    first_encode_s=encode_warm, first_decode_s=decode_warm,
  )  # fmt: skip
  per_video = (
    "VAE not timed (--no-vae)"
    if args.no_vae
    else f"{video_s:.1f} s/video ({args.steps} steps + VAE encode {encode_s:.2f} s + decode "
    f"{decode_s:.2f} s)"
  )
  print(
    f"[{name}] {step_s:.3f} s/step ({timed} timed steps), {per_video}; "
    f"denoise compile ~{denoise_warm - denoise_s:.1f} s, build {build_s:.1f} s",
    flush=True,
  )
  return res


def main(argv=None):
  args = parse_args(argv)
  names = ("1.3b", "14b") if args.preset == "both" else (args.preset,)
  results = [bench(n, args) for n in names]
  if args.json:
    with open(args.json, "w") as fh:
      json.dump(results, fh, indent=2)
  return results


if __name__ == "__main__":
  main()
