"""`o2a train`: train One-to-All from a config file, with dotted overrides, on one or many hosts.

  o2a train --config configs/o2a.py:model=tiny,stage=2 --workdir runs/tiny
  o2a train --config configs/o2a.py:model=1.3b,stage=2,bf16,remat=full --workdir gs://... \\
      --config.optim.lr=1e-5 --config.data.source=/data/o2a --config.train.mesh_shape='(1,8,1,1)'

Flags (absl, through `ml_collections.config_flags`):
  --config PATH[:ARG]      a `configs/*.py` file and its `get_config` argument
  --config.<a.b>=VALUE     override any config field (the config is locked: typos are errors)
  --workdir DIR            checkpoints/, tb/ (TensorBoard) and samples/; resumes from its last
                           checkpoint when there is one
  --coordinator_address HOST:PORT, --num_processes N, --process_id I
                           multi-host: every process runs the same command with its own id
                           (`jax.distributed.initialize`); also read from JAX_COORDINATOR_ADDRESS,
                           JAX_NUM_PROCESSES, JAX_PROCESS_ID
  --distributed            `jax.distributed.initialize()` with cluster auto-detection (TPU pods,
                           SLURM, Open MPI) instead of the three flags above

SIGTERM saves a checkpoint and exits 0; too many non-finite steps in a row exit 3.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

EXIT_DIVERGED = 3


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser(
    "train",
    help="train One-to-All (o2a train --config configs/o2a.py:ARG --workdir DIR)",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
    add_help=False,
    prefix_chars="\0",  # every argument goes to the absl flags below, `--help` included
  )
  p.add_argument("flags", nargs=argparse.REMAINDER, help="absl flags, see --help")
  p.set_defaults(func=run)


def _flag_values(argv: list[str]):
  """The flags of `o2a train`; `argv` (program name first) is what will be parsed (config_flags
  reads the dotted overrides from it, not from sys.argv)."""
  from absl import flags
  from ml_collections import config_flags

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    "config",
    None,
    "config file and argument, e.g. configs/o2a.py:model=tiny",
    flag_values=fv,
    sys_argv=argv,
  )
  flags.DEFINE_string("workdir", None, "run folder (checkpoints, tb, samples)", flag_values=fv)
  flags.DEFINE_string(
    "coordinator_address",
    os.environ.get("JAX_COORDINATOR_ADDRESS"),
    "multi-host coordinator HOST:PORT",
    flag_values=fv,
  )
  env_n, env_i = os.environ.get("JAX_NUM_PROCESSES"), os.environ.get("JAX_PROCESS_ID")
  flags.DEFINE_integer(
    "num_processes", int(env_n) if env_n else None, "number of processes", flag_values=fv
  )
  flags.DEFINE_integer(
    "process_id", int(env_i) if env_i else None, "this process's id", flag_values=fv
  )
  flags.DEFINE_bool(
    "distributed", False, "jax.distributed.initialize() with auto-detection", flag_values=fv
  )
  flags.DEFINE_bool("progress", True, "show the progress bar", flag_values=fv)
  return fv


def _flag_value(flags_: list[str], name: str) -> str | None:
  """The value of `--name=V` or `--name V` in `flags_` (the last one wins), else None."""
  value = None
  for i, a in enumerate(flags_):
    if a.startswith(f"--{name}="):
      value = a.split("=", 1)[1]
    elif a == f"--{name}" and i + 1 < len(flags_):
      value = flags_[i + 1]
  return value


def check_config_flags(flags_: list[str]) -> None:
  """Loads `--config` and checks every `--config.a.b=V` key before absl does (which reports a
  missing file, a bad `get_config` argument or a typo in a key as a long traceback)."""
  from o2a_jax import config_lib

  spec = _flag_value(flags_, "config")
  if spec is None:
    return
  path, _, arg = spec.partition(":")
  try:
    base = config_lib.load_config_file(path, arg or None)
  except KeyError as e:  # get_config's unknown model / stage
    raise ValueError(f"--config {spec}: {e.args[0]}") from None
  for a in flags_:
    if not a.startswith("--config."):
      continue
    key = a[len("--config.") :].split("=", 1)[0]
    node = base
    for i, part in enumerate(key.split(".")):
      if not hasattr(node, "keys") or part not in node:
        where = ".".join(key.split(".")[:i]) or "the config"
        known = ", ".join(sorted(node.keys())) if hasattr(node, "keys") else "(not a group)"
        raise ValueError(
          f"--config.{key}: unknown config key {part!r} in {where}; its keys are: {known}"
        )
      node = node[part]


def check_config_values(config) -> None:
  """Values that would run silently wrong: caught before anything is built."""
  if int(config.train.steps) < 0:
    raise ValueError(f"--config.train.steps={config.train.steps}: must be >= 0")
  for key in ("ckpt_every", "log_every"):
    if key in config.train and int(config.train[key]) < 1:
      raise ValueError(f"--config.train.{key}={config.train[key]}: must be >= 1")


def _initialize_distributed(fv) -> None:
  import jax

  if fv.coordinator_address:
    if fv.num_processes is None or fv.process_id is None:
      raise ValueError("--coordinator_address needs --num_processes and --process_id")
    jax.distributed.initialize(fv.coordinator_address, fv.num_processes, fv.process_id)
  elif fv.distributed:
    jax.distributed.initialize()


def run(args) -> int:
  from absl import flags

  argv = ["o2a train", *args.flags]
  fv = _flag_values(argv)
  if any(a in ("-h", "--help", "--helpfull") for a in argv):
    print(__doc__)
    print(fv.get_help())
    return 0
  check_config_flags(args.flags)
  try:
    fv(argv)
    config = fv.config
  except flags.Error as e:
    raise ValueError(f"{e} (see o2a train --help)") from None
  if config is None:
    raise ValueError("--config is required, e.g. --config configs/o2a.py:model=tiny")
  if not fv.workdir:
    raise ValueError("--workdir is required")
  check_config_values(config)
  if "://" not in fv.workdir:  # local folders: checked now, not at the first checkpoint
    from o2a_jax.io.output_paths import check_writable

    check_writable(fv.workdir, flag="--workdir", folder=True)
  _initialize_distributed(fv)
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # grain workers read absl flags (google/grain#1355)

  import jax

  from o2a_jax.train import trainer

  logging.basicConfig(
    level=logging.INFO if jax.process_index() == 0 else logging.WARNING,
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
  )
  print(
    f"o2a train: stage {config.stage}, {jax.process_count()} process(es), "
    f"{jax.device_count()} {jax.devices()[0].platform} device(s), mesh "
    f"{tuple(config.train.mesh_shape)}, workdir {fv.workdir}",
    file=sys.stderr,
  )
  try:
    result = trainer.train(config, fv.workdir, progress=fv.progress)
  except trainer.TrainingDiverged as e:
    print(f"o2a train: error: {e}", file=sys.stderr)
    return EXIT_DIVERGED
  last = result.history[-1] if result.history else {}
  figures = ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "steps_per_s") if k in last)
  print(f"o2a train: {result.reason} at step {result.step} ({figures})", file=sys.stderr)
  return 0
