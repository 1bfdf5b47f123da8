"""Output error of weight-only int8 and fp8 (`o2a_jax.model.quantize`) against the float model.

Two models, one denoiser forward each on fixed random inputs (2 latent frames of 4x6 plus the
reference prefix, t = 700, TokenReplace on):
- the golden tiny model (shared/golden/model_tiny, the official code's weights), float32;
- a reduced model of the 14B's width (D 5120, 40 heads, FFN 13824) with random weights and 2 main,
  1 extractor and 1 pose block, in bfloat16 storage and compute.
For each format: the relative error ||q - ref|| / ||ref|| with ref the float model in the same
compute dtype, beside the error of bf16 against float32 for scale, and the weight bytes.

  python benchmarks/int8_report.py [--json benchmarks/results/X.json]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from o2a_jax.model import build_denoiser, quantize  # noqa: E402
from o2a_jax.model.config import preset  # noqa: E402
from o2a_jax.model.shapes import example_inputs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(model, args) -> np.ndarray:
  out = jax.jit(lambda m, *a: m(*a, token_replace=True))(model, *args)
  return np.asarray(out.astype(jnp.float32), np.float64)


def _rel(a, b) -> float:
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def golden_tiny() -> dict:
  from o2a_jax.convert import load_official

  path = ROOT / "tests" / "fixtures" / "model_tiny"
  f32 = load_official(path)
  args = example_inputs(f32.cfg)
  ref = _run(f32, args)
  out = {
    "model": "golden tiny (official weights), float32 compute",
    "bf16_vs_float32_rel": _rel(_run(load_official(path, dtype=jnp.bfloat16), args), ref),
    "weight_bytes_float32": quantize.weight_bytes(f32),
  }
  for fmt in ("int8", "fp8"):
    model = load_official(path)
    quantize.quantize(model, fmt=fmt)
    out[f"{fmt}_vs_float32_rel"] = _rel(_run(model, args), ref)
    out[f"weight_bytes_{fmt}"] = quantize.weight_bytes(model)
  return out


def reduced_14b() -> dict:
  cfg = preset(
    "14b", num_layers=2, ref_layers=1, pose_layers=1, dtype="bfloat16", param_dtype="bfloat16"
  )
  t0 = time.perf_counter()
  args = example_inputs(cfg)
  ref = _run(build_denoiser(cfg, seed=0), args)
  out = {
    "model": "14B width (D 5120, 40 heads, FFN 13824), 2+1+1 blocks, random weights, bf16",
    "weight_bytes_bf16": quantize.weight_bytes(build_denoiser(cfg, seed=0)),
  }
  for fmt in ("int8", "fp8"):
    model = build_denoiser(cfg, seed=0)
    quantize.quantize(model, fmt=fmt)
    out[f"{fmt}_vs_bf16_rel"] = _rel(_run(model, args), ref)
    out[f"weight_bytes_{fmt}"] = quantize.weight_bytes(model)
    del model
  out["seconds"] = time.perf_counter() - t0
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--json", default=None, help="also write the figures to this JSON file")
  args = p.parse_args(argv)
  rows = [golden_tiny(), reduced_14b()]
  for r in rows:
    print(r["model"])
    for k, v in r.items():
      if k != "model":
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
  if args.json:
    from o2a_jax.io.json_files import write_json

    write_json(args.json, {"jax": jax.__version__, "device": str(jax.devices()[0]), "rows": rows})
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
