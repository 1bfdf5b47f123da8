"""Weight and training-state memory of the 1.3B and 14B models: full, LoRA and int8 configurations.

Every figure comes from shapes alone (`nnx.eval_shape`, `jax.eval_shape`): nothing is allocated,
so this runs on any laptop in seconds. What is counted:

- inference weights: every denoiser parameter in bf16, or with the transformer linears int8 plus
  one float32 scale per output channel (`o2a_jax.model.quantize`);
- training state (the `TrainState` the step carries, without activations, the VAE or the text):
  trainable float32 master weights, their AdamW moments (2 x float32) and, with `--ema`, the EMA
  copy (float32); the frozen parameters in the model's storage dtype (bf16, or int8 for the LoRA
  base with `base_int8`). Full training: the official stage-2 trainable set. LoRA: adapters on
  the targets (default attn, ffn, hrfa), the whole model frozen.

  python benchmarks/memory_report.py [--ranks 16,64] [--ema] [--json benchmarks/results/X.json]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from o2a_jax import sharding  # noqa: E402
from o2a_jax.layers.linear import LoRAParam, QuantScale  # noqa: E402
from o2a_jax.model import lora, quantize  # noqa: E402
from o2a_jax.model.config import preset  # noqa: E402
from o2a_jax.model.denoiser import Denoiser  # noqa: E402
from o2a_jax.train import trainable  # noqa: E402

GIB = 2**30


def _abstract(cfg, *, rank: int = 0, targets=lora.DEFAULT_TARGETS, int8: bool = False):
  def build():
    model = Denoiser(cfg, rngs=nnx.Rngs(0))
    if int8:
      quantize.quantize(model)
    if rank:
      lora.attach(model, rank=rank, targets=targets)
    return model

  with nnx.use_eager_sharding(False), sharding.axis_rules():
    return nnx.eval_shape(build)


def _bytes(state) -> int:
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))


def _count(state) -> int:
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def report(name: str, ranks: list[int], ema: bool) -> dict:
  cfg = preset(name, dtype="bfloat16", param_dtype="bfloat16")
  copies = 4 if ema else 3  # f32 master + Adam mu, nu (+ EMA), per trainable parameter
  out = {"preset": name, "optimizer_copies_per_trainable": copies}

  base = _abstract(cfg)
  params = nnx.state(base, nnx.Param)
  total = _count(params)
  out["parameters"] = total
  out["weights_bf16_gib"] = _bytes(params) / GIB
  q = _abstract(cfg, int8=True)
  out["weights_int8_gib"] = _bytes(nnx.state(q, nnx.Param, QuantScale)) / GIB
  out["int8_layers"] = len(quantize.quantized_paths(q))

  n_train, _ = trainable.count(base, 2)
  out["full_stage2"] = {
    "trainable": n_train,
    "trainable_state_gib": n_train * 4 * copies / GIB,
    "frozen_bf16_gib": (total - n_train) * 2 / GIB,
  }
  out["full_stage2"]["total_gib"] = (
    out["full_stage2"]["trainable_state_gib"] + out["full_stage2"]["frozen_bf16_gib"]
  )
  out["lora"] = []
  for rank in ranks:
    m = _abstract(cfg, rank=rank)
    n = _count(nnx.state(m, LoRAParam))
    mq = _abstract(cfg, rank=rank, int8=True)
    row = {
      "rank": rank,
      "targets": ",".join(lora.DEFAULT_TARGETS),
      "adapter_parameters": n,
      "trainable_state_gib": n * 4 * copies / GIB,
      "frozen_bf16_gib": _bytes(nnx.state(m, nnx.Param)) / GIB,
      "frozen_int8_gib": _bytes(nnx.state(mq, nnx.Param, QuantScale)) / GIB,
    }
    row["total_bf16_base_gib"] = row["trainable_state_gib"] + row["frozen_bf16_gib"]
    row["total_int8_base_gib"] = row["trainable_state_gib"] + row["frozen_int8_gib"]
    out["lora"].append(row)
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--presets", default="1.3b,14b", help="model presets (default 1.3b,14b)")
  p.add_argument("--ranks", default="16,64", help="LoRA ranks (default 16,64)")
  p.add_argument("--ema", action="store_true", help="count an EMA copy of the trainable weights")
  p.add_argument("--json", default=None, help="also write the figures to this JSON file")
  args = p.parse_args(argv)
  ranks = [int(r) for r in args.ranks.split(",") if r]
  rows = [report(n, ranks, args.ema) for n in args.presets.split(",")]
  for r in rows:
    f = r["full_stage2"]
    print(
      f"{r['preset']}: {r['parameters'] / 1e9:.3f} B parameters; weights bf16 "
      f"{r['weights_bf16_gib']:.2f} GiB, int8 {r['weights_int8_gib']:.2f} GiB "
      f"({r['int8_layers']} stacked linear groups int8)"
    )
    print(
      f"  full stage 2: {f['trainable'] / 1e9:.3f} B trainable -> state "
      f"{f['trainable_state_gib']:.2f} GiB + frozen bf16 {f['frozen_bf16_gib']:.2f} GiB = "
      f"{f['total_gib']:.2f} GiB"
    )
    for row in r["lora"]:
      print(
        f"  LoRA r={row['rank']} ({row['targets']}): {row['adapter_parameters'] / 1e6:.1f} M "
        f"adapter parameters -> state {row['trainable_state_gib']:.3f} GiB; + base bf16 "
        f"{row['frozen_bf16_gib']:.2f} = {row['total_bf16_base_gib']:.2f} GiB, + base int8 "
        f"{row['frozen_int8_gib']:.2f} = {row['total_int8_base_gib']:.2f} GiB"
      )
  if args.json:
    from o2a_jax.io.json_files import write_json

    payload = {"ema": args.ema, "note": "state only: no activations, VAE or text", "models": rows}
    write_json(pathlib.Path(args.json), payload)
    print(f"wrote {args.json}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
