"""Train-step benchmark: step time, model TFLOP/s and MFU of a stage-2 step (official three training
stages).

Full size (a GPU/TPU): the 1.3B model, 29 frames (8 latent), the 512 and 768 square buckets,
batch 1 per device, bf16 compute with float32 masters, full remat per block:

  python benchmarks/train_benchmark.py --model 1.3b --buckets 512,768 --dtype bf16 \\
      --remat full --attn cudnn --json bench.json

Reduced (a CPU): `--reduced` keeps the 1.3B width (12 heads x 128) but runs 2 main blocks, 1
extractor block and 1 pose block, with the buckets scaled by `--scale` (default 1/4: 128 and 192
pixels) and the real Wan VAE architecture. The whole jitted step is timed (VAE encoding of the
batch included); the FLOPs are the denoiser's (forward + backward = 3x forward, see
`o2a_jax/train/metrics.py`). MFU needs a known peak (`--peak_tflops` or the device table); on a
CPU only the achieved TFLOP/s are reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def get_config(arg: str):
  spec = importlib.util.spec_from_file_location("o2a_config", ROOT / "configs" / "o2a.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def bench_bucket(args, size: int) -> dict:
  from o2a_jax import config_lib
  from o2a_jax.train import metrics, trainer

  arg = f"model={args.model},stage=2,remat={args.remat},attn={args.attn}"
  if args.model == "tiny-small":  # the loop tests' model: width 64, 2 blocks, small VAE
    arg = arg.replace("model=tiny-small", "model=tiny,small")
  if args.dtype == "bf16":
    arg += ",bf16"
  c = get_config(arg)
  if args.reduced:
    c.model.update(dict(num_layers=2, ref_layers=1, pose_layers=1))
  c.data.source = "synthetic"
  c.data.frames = args.frames
  c.data.global_batch = args.batch or jax.device_count()
  c.data.synthetic.height = c.data.synthetic.width = size
  c.data.synthetic.num_samples = max(8, c.data.global_batch)
  c.optim.warmup_steps = 0
  c.train.steps = args.warmup + args.steps
  t0 = time.perf_counter()
  s = trainer.setup(c)
  build_s = time.perf_counter() - t0
  it = trainer.data_iterator(c)
  bsh = trainer.batch_sharding(s.mesh)
  batches = [trainer.global_batch(next(it), bsh) for _ in range(2)]
  state = s.state
  t0 = time.perf_counter()
  state, m = s.step_fn(state, batches[0])
  jax.block_until_ready(m)
  compile_s = time.perf_counter() - t0
  for i in range(args.warmup - 1):
    state, m = s.step_fn(state, batches[i % 2])
  jax.block_until_ready(m)
  times = []
  for i in range(args.steps):
    t0 = time.perf_counter()
    state, m = s.step_fn(state, batches[i % 2])
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  cfg = config_lib.denoiser_config(c.model)
  flops = metrics.train_step_flops(
    cfg,
    batch=c.data.global_batch,
    frames=args.frames,
    height=size,
    width=size,
    text_len=c.text.length,
  )
  peak = args.peak_tflops or metrics.peak_tflops()
  tflops = flops / step_s / 1e12
  return {
    "bucket": size,
    "frames": args.frames,
    "global_batch": c.data.global_batch,
    "model": args.model + (" reduced (2 main, 1 extractor, 1 pose block)" if args.reduced else ""),
    "dtype": args.dtype,
    "remat": args.remat,
    "attn": args.attn,
    "devices": jax.device_count(),
    "device_kind": jax.devices()[0].device_kind,
    "build_s": round(build_s, 2),
    "compile_and_first_step_s": round(compile_s, 2),
    "step_s": round(step_s, 4),
    "step_s_all": [round(t, 4) for t in times],
    "model_tflop_per_step": round(flops / 1e12, 4),
    "tflops_per_s": round(tflops, 4),
    "tflops_per_s_per_device": round(tflops / jax.device_count(), 4),
    "mfu": round(tflops / jax.device_count() / peak, 4) if peak else None,
    "loss": float(m["loss"]),
  }


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--model", default="1.3b", choices=("tiny", "tiny-small", "1.3b", "14b"))
  p.add_argument("--buckets", default="512,768", help="square bucket sizes in pixels")
  p.add_argument("--frames", type=int, default=29)
  p.add_argument("--batch", type=int, default=0, help="global batch (default: one per device)")
  p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
  p.add_argument("--remat", default="full")
  p.add_argument("--attn", default="xla")
  p.add_argument("--reduced", action="store_true", help="CPU size (see the docstring)")
  p.add_argument("--scale", type=float, default=0.25, help="bucket scale with --reduced")
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=3)
  p.add_argument("--peak_tflops", type=float, default=0.0)
  p.add_argument("--json", default=None, help="write the results here")
  args = p.parse_args(argv)
  sizes = [int(b) for b in args.buckets.split(",")]
  if args.reduced:
    sizes = [int(round(s * args.scale / 16)) * 16 for s in sizes]
  results = []
  with tempfile.TemporaryDirectory():
    for size in sizes:
      r = bench_bucket(args, size)
      results.append(r)
      print(json.dumps(r), flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=1))
  return 0


if __name__ == "__main__":
  sys.exit(main())
