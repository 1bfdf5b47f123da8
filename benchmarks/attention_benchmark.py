"""Benchmark of the attention sublayer (RoPE + self + reference attention) per implementation.

The unit is `kernels.hybrid_attention` on un-rotated q/k with (cos, sin) tables: RoPE plus both
branches with separate softmaxes, summed (official main block with hybrid reference attention).
Reported: forward and backward TFLOP/s, counting matmul FLOPs only: forward 4·B·N·K·Lq·(Lq + S);
backward 2.5x forward (the usual flash-attention convention: five matmuls against two). Backward
time is (forward+backward) minus forward.

Shapes: `1.3b` (12 heads, 32,760 query tokens, 1,560 reference tokens) and `14b` (40 heads,
75,600 and 3,600), head dim 128, batch 1. `--small` shrinks them for a CPU smoke run (Pallas
kernels then run in interpret mode, so CPU numbers say nothing about kernel speed).

  python benchmarks/attention_benchmark.py --small --out /tmp/attn.json
  python benchmarks/attention_benchmark.py --impls cudnn,pallas_gpu,pallas_mosaic --out h100.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import kernels  # noqa: E402
from kernels.attention import IMPLS  # noqa: E402

SHAPES = {"1.3b": (12, 32760, 1560), "14b": (40, 75600, 3600)}
SMALL = {"1.3b": (2, 1000, 120), "14b": (2, 1500, 150)}
DEFAULT_IMPLS = {
  "gpu": ("xla", "cudnn", "pallas_gpu", "pallas_mosaic"),
  "tpu": ("xla", "pallas_tpu"),
  "cpu": ("reference", "xla", "pallas_gpu", "pallas_tpu"),
}


def _inputs(heads, lq, lk, kd, batch, dtype, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 9)
  x = lambda i, n: jax.random.normal(ks[i], (batch, n, heads, kd), jnp.float32).astype(dtype)

  def table(i, n):
    ang = jax.random.uniform(ks[i], (n, kd // 2), maxval=6.0)
    return jnp.cos(ang), jnp.sin(ang)

  arrays = (x(0, lq), x(1, lq), x(2, lq), x(3, lk), x(4, lk))
  tables = (table(5, lq), table(6, lq), table(7, lq), table(8, lk))
  return arrays, tables


def _time(fn, args, warmup, iters):
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def bench_one(impl, arrays, tables, warmup, iters):
  qt, kt, qrt, krt = tables

  def fwd(q, k, v, kr, vr):
    return kernels.hybrid_attention(
      q, k, v, kr, vr, q_rope=qt, k_rope=kt, q_ref_rope=qrt, k_ref_rope=krt, impl=impl
    )

  def fwd_bwd(q, k, v, kr, vr, g):
    out, vjp = jax.vjp(fwd, q, k, v, kr, vr)
    return out, vjp(g)

  g = jnp.ones_like(arrays[0])
  t_fwd = _time(jax.jit(fwd), arrays, warmup, iters)
  t_all = _time(jax.jit(fwd_bwd), (*arrays, g), warmup, iters)
  return t_fwd, max(t_all - t_fwd, 1e-9)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--impls", default="", help=f"comma list from {IMPLS}; default per backend")
  p.add_argument("--sizes", default="1.3b,14b", help="comma list from " + ",".join(SHAPES))
  p.add_argument("--small", action="store_true", help="CPU-sized shapes " + str(SMALL))
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--head-dim", type=int, default=128)
  p.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--out", default="attention_benchmark.json", help="JSON results path")
  args = p.parse_args(argv)

  backend = jax.default_backend()
  impls = [s for s in args.impls.split(",") if s] or list(DEFAULT_IMPLS.get(backend, ("xla",)))
  for impl in impls:
    if impl not in IMPLS:
      p.error(f"unknown impl {impl!r}; choose from {IMPLS}")
  dtype = jnp.dtype(args.dtype)
  table = SMALL if args.small else SHAPES
  results = []
  print(f"backend={backend} device={jax.devices()[0].device_kind} dtype={args.dtype}")
  print(f"{'size':6} {'impl':14} {'fwd ms':>10} {'bwd ms':>10} {'fwd TF/s':>9} {'bwd TF/s':>9}")
  for size in [s for s in args.sizes.split(",") if s]:
    heads, lq, lk = table[size]
    arrays, tables = _inputs(heads, lq, lk, args.head_dim, args.batch, dtype)
    flops_fwd = 4 * args.batch * heads * args.head_dim * lq * (lq + lk)
    for impl in impls:
      row = dict(size=size, impl=impl, heads=heads, lq=lq, lk=lk, batch=args.batch,
                 head_dim=args.head_dim, dtype=args.dtype, backend=backend,
                 small=args.small, flops_fwd=flops_fwd, flops_bwd=2.5 * flops_fwd)  # fmt: skip
      try:
        t_fwd, t_bwd = bench_one(impl, arrays, tables, args.warmup, args.iters)
        row.update(fwd_s=t_fwd, bwd_s=t_bwd, fwd_tflops=flops_fwd / t_fwd / 1e12,
                   bwd_tflops=2.5 * flops_fwd / t_bwd / 1e12)  # fmt: skip
        print(f"{size:6} {impl:14} {t_fwd * 1e3:10.2f} {t_bwd * 1e3:10.2f} "
              f"{row['fwd_tflops']:9.4f} {row['bwd_tflops']:9.4f}")  # fmt: skip
      except Exception as e:  # record and go on: e.g. cuDNN on a CPU host
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
        print(f"{size:6} {impl:14} failed: {row['error']}")
        if os.environ.get("BENCH_TRACEBACK"):
          traceback.print_exc()
      results.append(row)
  out_dir = os.path.dirname(os.path.abspath(args.out))
  with tempfile.NamedTemporaryFile("w", dir=out_dir, delete=False, suffix=".tmp") as f:
    json.dump({"results": results, "jax": jax.__version__}, f, indent=2)
  os.replace(f.name, args.out)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
