"""Time to embed one prompt with the UMT5-XXL text encoder (random weights) on this machine.

Builds the full-size encoder with random weights (no checkpoint needed), compiles the forward for
one `--length`-token prompt (mask: `--real` real tokens, the rest padding) and times `--repeats`
calls after a warm-up. Full XXL in float32 is 22.7 GB of weights, so parameters default to
bfloat16 (11.4 GB); `--dtype` picks the compute dtype (bfloat16, as the official inference, or
float32, often faster on CPUs without bf16 matmul units).

Usage:
  python benchmarks/text_benchmark.py                      # XXL, bf16 weights, bf16 compute
  python benchmarks/text_benchmark.py --dtype float32      # bf16 weights, f32 compute
  python benchmarks/text_benchmark.py --layers 2           # quick: XXL width, 2 layers
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
import psutil
from flax import nnx

from o2a_jax.text.umt5 import UMT5_XXL, abstract_text_encoder


def random_encoder(cfg, dtype, param_dtype, seed=0):
  """Full-size random weights, built in place on the device.

  Each parameter gets one random block of ~16M values, written at every row offset with a
  donated in-place update: values do not change the timing, while drawing 5.7B normals (or a
  host buffer plus its transfer, 2-3x a parameter's size) would cost minutes and gigabytes.
  """
  abstract = abstract_text_encoder(cfg, dtype=dtype, param_dtype=param_dtype)
  graphdef, state = nnx.split(abstract)
  key = jax.random.key(seed)

  @functools.partial(jax.jit, static_argnums=(1, 2))
  def fill(k, shape, dtype):
    return (0.02 * jax.random.normal(k, shape, jnp.float32) + 0.01).astype(dtype)

  @functools.partial(jax.jit, donate_argnums=0)
  def put(buf, block, start):
    return jax.lax.dynamic_update_slice_in_dim(buf, block, start, 0)

  for i, (_, var) in enumerate(state.flat_state()):
    spec = var.get_value()
    rows = min(spec.shape[0], max(1, (1 << 24) // max(1, int(np.prod(spec.shape[1:])))))
    block = fill(jax.random.fold_in(key, i), (rows, *spec.shape[1:]), spec.dtype)
    buf = jax.jit(lambda s=spec: jnp.zeros(s.shape, s.dtype))()
    for start in range(0, spec.shape[0], rows):
      n = min(rows, spec.shape[0] - start)
      buf = put(buf, block[:n], start)
    var.set_value(buf)
  return nnx.merge(graphdef, state)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
  parser.add_argument("--param-dtype", choices=("bfloat16", "float32"), default="bfloat16")
  parser.add_argument("--length", type=int, default=512, help="tokens (padded length)")
  parser.add_argument("--real", type=int, default=64, help="real tokens in the prompt")
  parser.add_argument("--layers", type=int, default=None, help="override the 24 layers (quick)")
  parser.add_argument("--repeats", type=int, default=2)
  args = parser.parse_args()

  cfg = UMT5_XXL if args.layers is None else dataclasses.replace(UMT5_XXL, num_layers=args.layers)
  t0 = time.perf_counter()
  encoder = random_encoder(cfg, jnp.dtype(args.dtype), jnp.dtype(args.param_dtype))
  t_init = time.perf_counter() - t0
  rss_init = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  rss_params = psutil.Process().memory_info().rss / 2**30

  graphdef, state = nnx.split(encoder)

  @jax.jit
  def forward(state, ids, mask):
    hidden = nnx.merge(graphdef, state)(ids, mask)
    return jnp.where(mask[..., None] > 0, hidden, jnp.zeros((), hidden.dtype))

  rng = np.random.default_rng(0)
  ids = np.zeros((1, args.length), np.int32)
  ids[0, : args.real] = rng.integers(3, 256300, args.real)
  mask = (np.arange(args.length) < args.real).astype(np.int32)[None]
  t0 = time.perf_counter()
  compiled = forward.lower(state, ids, mask).compile()
  t_compile = time.perf_counter() - t0
  jax.block_until_ready(compiled(state, ids, mask))  # warm-up
  times = []
  for _ in range(args.repeats):
    t0 = time.perf_counter()
    out = jax.block_until_ready(compiled(state, ids, mask))
    times.append(time.perf_counter() - t0)
  assert out.shape == (1, args.length, cfg.dim) and bool(jnp.isfinite(out).all())
  result = dict(
    device=str(jax.devices()[0].device_kind),
    cpu_cores=os.cpu_count(),
    layers=cfg.num_layers,
    params=cfg.param_count(),
    dtype=args.dtype,
    param_dtype=args.param_dtype,
    length=args.length,
    init_s=round(t_init, 1),
    compile_s=round(t_compile, 1),
    embed_s=[round(t, 2) for t in times],
    embed_s_min=round(min(times), 2),
    rss_after_init_gb=round(rss_params, 1),
    peak_rss_init_gb=round(rss_init, 1),
    peak_rss_gb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1),
  )
  print(json.dumps(result))


if __name__ == "__main__":
  main()
