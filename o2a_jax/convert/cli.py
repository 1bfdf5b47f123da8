"""`o2a convert import|export`: official safetensors <-> native Orbax checkpoints."""

from __future__ import annotations

import argparse
import time

from tqdm import tqdm

from o2a_jax.cli_types import DTYPE_NAMES, positive_float
from o2a_jax.io.output_paths import check_writable

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
