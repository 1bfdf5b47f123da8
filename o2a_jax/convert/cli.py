"""`o2a convert import|export|run|quantize`: official safetensors <-> native Orbax checkpoints,
training runs -> either (or a LoRA adapter file), and int8 weight-only checkpoints."""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from o2a_jax.cli_types import DTYPE_NAMES, positive_float
from o2a_jax.io.output_paths import check_output, check_writable

_DTYPES = DTYPE_NAMES


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("convert", help="convert checkpoints between the official and native layouts")
  csub = p.add_subparsers(dest="direction", metavar="DIRECTION", required=True)

  imp = csub.add_parser(
    "import",
    help="official PyTorch checkpoint (safetensors folder or file) -> native checkpoint",
    description="Streams an official One-to-All checkpoint (a folder of *.safetensors shards or "
    "one file; float32 or bfloat16) into a native Orbax checkpoint, one tensor at a time. The "
    "architecture is inferred from the keys and shapes; every key is checked first.",
  )
  imp.add_argument("src", help="official checkpoint folder or .safetensors file")
  imp.add_argument("dst", help="native checkpoint folder to create (must not exist)")
  imp.add_argument(
    "--dtype",
    choices=sorted(_DTYPES),
    default="fp32",
    help="parameter dtype of the native checkpoint (default fp32)",
  )
  imp.add_argument(
    "--scratch",
    default=None,
    help="folder for the temporary disk-backed buffers (default: beside DST)",
  )
  imp.set_defaults(func=_import)

  exp = csub.add_parser(
    "export",
    help="native checkpoint -> official safetensors layout (strict-loadable)",
    description="Writes sharded safetensors with the official key names and PyTorch layouts "
    "plus model.safetensors.index.json, loadable by the official code with strict=True.",
  )
  exp.add_argument("src", help="native checkpoint folder")
  exp.add_argument("dst", help="folder to create (must not exist or be empty)")
  exp.add_argument(
    "--dtype",
    choices=sorted(_DTYPES),
    default=None,
    help="tensor dtype of the export (default: the checkpoint's)",
  )
  exp.add_argument(
    "--max-shard-gb",
    type=positive_float,
    default=5.0,
    help="maximum shard size in GiB (default 5, as the official export)",
  )
  exp.set_defaults(func=_export)

  run = csub.add_parser(
    "run",
    help="a training run's checkpoint -> official safetensors, native checkpoint or LoRA adapter",
    description="Restores a checkpoint of an `o2a train` workdir (the latest, or --step) with the "
    "config saved beside it. Full runs: every parameter comes from the checkpoint. LoRA runs "
    "(config.lora.rank >= 1): the adapters come from the checkpoint and the base from the run's "
    "config.init.checkpoint (or --base); --to official|native writes the merged model, --to "
    "adapter the adapters alone (diffusers/PEFT key naming, transformer.<module>.lora_A/B.weight, "
    "the alpha/rank scale folded into lora_B).",
  )
  run.add_argument("workdir", help="the `o2a train --workdir` folder")
  run.add_argument("dst", help="folder (official, native) or .safetensors file (adapter) to create")
  run.add_argument(
    "--to",
    choices=("official", "native", "adapter"),
    default="official",
    help="what to write (default official)",
  )
  run.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  run.add_argument("--ema", action="store_true", help="the EMA parameters instead of the last")
  run.add_argument("--base", default=None, help="LoRA runs: the base model (default: the run's)")
  run.add_argument(
    "--dtype",
    choices=sorted(_DTYPES),
    default=None,
    help="tensor dtype of an official export (default: the model's)",
  )
  run.set_defaults(func=_run)

  q = csub.add_parser(
    "quantize",
    help="checkpoint -> native checkpoint with int8 (or fp8) transformer linears (weight-only)",
    description="Loads a native or official checkpoint and stores the linears of its transformer "
    "blocks as int8 codes (or fp8 e4m3 values) with one float32 scale per output channel "
    "(symmetric, max|W|/127, or /448 for fp8); the rest stays in its dtype. `o2a animate "
    "--checkpoint DST` loads it; the matmuls convert the codes inside the jitted computation.",
  )
  q.add_argument("src", help="native checkpoint folder, or official safetensors folder/file")
  q.add_argument("dst", help="native checkpoint folder to create (must not exist)")
  q.add_argument(
    "--dtype",
    choices=sorted(_DTYPES),
    default="bf16",
    help="dtype of the parameters that stay float (default bf16)",
  )
  q.add_argument(
    "--format", choices=("int8", "fp8"), default="int8", help="code format (default int8)"
  )
  q.set_defaults(func=_quantize)


def _import(args) -> int:
  from o2a_jax.convert import native
  from o2a_jax.io import safetensors as sio

  check_writable(args.dst, flag="DST", folder=True)
  if args.scratch:
    check_writable(args.scratch, flag="--scratch", folder=True)
  t0 = time.perf_counter()
  with sio.TensorSource(args.src) as src:
    total = len(src)
  with tqdm(total=total, unit="tensor", desc="import") as bar:
    cfg = native.import_official(
      args.src,
      args.dst,
      dtype=_DTYPES[args.dtype],
      progress=lambda n: bar.update(n - bar.n),
      scratch=args.scratch,
    )
  print(
    f"wrote {args.dst}: {cfg.num_layers} blocks x {cfg.dim} wide, {cfg.ref_layers} extractor "
    f"blocks, {cfg.pose_layers} pose blocks, {cfg.param_dtype} "
    f"({time.perf_counter() - t0:.1f} s)"
  )
  return 0


def _export(args) -> int:
  from o2a_jax import checkpoint
  from o2a_jax.convert import native, official

  check_writable(args.dst, flag="DST", folder=True)
  t0 = time.perf_counter()
  total = len(official.official_shapes(checkpoint.read_config(args.src)))
  with tqdm(total=total, unit="tensor", desc="export") as bar:
    native.export_native(  # one parameter in memory at a time, never the model
      args.src,
      args.dst,
      dtype=None if args.dtype is None else _DTYPES[args.dtype],
      max_shard_bytes=int(args.max_shard_gb * 2**30),
      progress=lambda n: bar.update(n - bar.n),
    )
  print(f"wrote {args.dst} ({total} tensors, {time.perf_counter() - t0:.1f} s)")
  return 0


def _run(args) -> int:
  from o2a_jax.checkpoint import save_native
  from o2a_jax.convert import official
  from o2a_jax.model import lora
  from o2a_jax.train import export

  if args.to == "adapter":
    if not args.dst.endswith(".safetensors"):
      raise ValueError(f"DST {args.dst!r}: the adapter file is one .safetensors file")
    check_output(args.dst, overwrite=False, flag="DST")
  else:
    check_writable(args.dst, flag="DST", folder=True)
  t0 = time.perf_counter()
  model, config, step = export.load_run(args.workdir, step=args.step, ema=args.ema, base=args.base)
  adapters = lora.adapted_layers(model)
  if args.to == "adapter":
    if not adapters:
      raise ValueError(f"{args.workdir} is not a LoRA run (config.lora.rank = 0): no adapters")
    n = lora.write_adapter_file(model, args.dst, targets=config.lora.targets, step=step)
    what = f"{n} adapted modules"
  else:
    if adapters:
      lora.merge(model)
    if args.to == "official":
      official.save_official(
        model, args.dst, dtype=None if args.dtype is None else _DTYPES[args.dtype]
      )
    else:
      save_native(model, args.dst)
    what = f"the {'merged ' if adapters else ''}model"
  print(f"wrote {args.dst}: {what} of step {step} ({time.perf_counter() - t0:.1f} s)")
  return 0


def _quantize(args) -> int:
  from o2a_jax.checkpoint import save_native
  from o2a_jax.inference.load import load_denoiser
  from o2a_jax.model import quantize

  check_writable(args.dst, flag="DST", folder=True)
  t0 = time.perf_counter()
  model = load_denoiser(args.src, dtype=_DTYPES[args.dtype])
  before = quantize.weight_bytes(model)
  paths = quantize.quantize(model, fmt=args.format)
  save_native(model, args.dst)
  after = quantize.weight_bytes(model)
  print(
    f"wrote {args.dst}: {len(paths)} {args.format} linears, weights {before / 2**30:.3f} -> "
    f"{after / 2**30:.3f} GiB ({time.perf_counter() - t0:.1f} s)"
  )
  return 0
