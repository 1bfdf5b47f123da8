"""Trains the puppet toy model (assets/puppet_model) through stages 1, 2 and 3 with `o2a train`.

  python scripts/make_puppet_world.py --out /tmp/pm/world --videos 160 --images 64 --heldout 16 \\
      --puppets 40 --seed 0 --size 64 --frames 48
  python scripts/train_puppet_model.py --world /tmp/pm/world --workdir /tmp/pm/run \\
      --out assets/puppet_model

(the exact commands and settings of the shipped weights are in assets/puppet_model/README.md)

The project's own pipeline end to end: `o2a data build official` turns the world's `train.csv` (the
official layout, official training data layout) into ArrayRecords; each stage is one `o2a train` run
with the `puppet` config (`configs/o2a.py`: the `tiny` architecture, the shipped puppet VAE and its
latent statistics, 64x64 clips of 9 frames, zero text embeddings for the always-empty prompt); after
each stage the last checkpoint's parameters are exported in the official layout (`save_official`),
which initialises the next stage as the recipe says (official initialisation: a stage-1 export ->
stage 2 with pose blocks copied from the backbone and zero projections; the stage-2 model -> stage
3). The toy has no Wan2.1-T2V backbone, so stage 1 starts from the seeded random init. The last
export is copied to `--out` with `training.json` (commands, settings, wall times, per-stage loss
curves).

Each `o2a train` runs in a child process as `o2a_jax.cli.main(["train", ...])` (this script with
`_o2a_train` first). On a CPU every 3-D convolution (the frozen VAE that encodes each batch, the
pose encoder) is computed as per-tap 2-D convolutions, the CPU default of
`o2a_jax/layers/conv.py` (XLA's CPU 3-D convolution is several times slower).
`--vae` picks the VAE folder (default assets/puppet_vae); its latent statistics normalise the
latents.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def o2a_train_in_process(argv: list[str]) -> int:
  """`o2a train argv...` in this process (the CPU default computes 3-D convolutions per tap)."""
  from o2a_jax.cli import main as o2a_main

  return o2a_main(["train", *argv])


def _run(cmd: list[str]) -> float:
  print("$", " ".join(cmd), flush=True)
  t0 = time.perf_counter()
  subprocess.run(cmd, check=True, cwd=REPO)
  return time.perf_counter() - t0


def config_arg(stage: int, vae: str, small: bool = False, patch: int = 0) -> str:
  small_arg = ",small" if small else ""
  return (
    f"model=tiny,puppet,stage={stage}{small_arg}"
    + (f",vae={vae}" if vae else "")
    + (f",patch={patch}" if patch else "")
  )


def export_stage(workdir: pathlib.Path, out: pathlib.Path, ema: bool) -> tuple[int, dict, str]:
  """Last checkpoint of a stage's run (its EMA parameters when `ema`) -> official safetensors
  folder `out` (what `o2a convert run WORKDIR OUT [--ema]` writes); returns its step, the
  model's attention head layout (the official layout stores no head count, and `load_official`
  needs it for any but the default) and its pose drawing (`config.data.pose_drawing`, which
  sampling must repeat)."""
  from o2a_jax.convert import save_official
  from o2a_jax.train import export

  model, config, step = export.load_run(workdir, ema=ema)
  if out.exists():
    shutil.rmtree(out)
  save_official(model, out)
  heads = {"num_heads": int(config.model.num_heads), "head_dim": int(config.model.head_dim)}
  return step, heads, str(config.data.pose_drawing)


def tb_losses(workdir: pathlib.Path) -> list[tuple[int, float]]:
  """(step, loss) pairs from the run's TensorBoard event files (TFRecord: length, crc, Event
  proto, crc), read with tensorboardX's protos."""
  import struct

  from tensorboardX.proto import event_pb2

  out = []
  for path in sorted((workdir / "tb").glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        if v.tag == "loss" and v.HasField("simple_value"):
          out.append((int(event.step), float(v.simple_value)))
  return out


def main(argv=None) -> int:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--world", required=True, help="puppet world folder (make_puppet_world.py)")
  p.add_argument("--workdir", required=True, help="run folder (data/, stage1/..3/, exports)")
  p.add_argument("--out", required=True, help="output model folder (replaced if it exists)")
  p.add_argument("--steps", default="60,300,60", help="steps of stages 1,2,3 (default 60,300,60)")
  p.add_argument("--lr", default="1e-3,1e-3,3e-4", help="peak learning rates of stages 1,2,3")
  p.add_argument(
    "--trainable",
    default="all,official,official",
    help="trainable set of stages 1,2,3: official (the official stage's set) or all "
    "(default all,official,official; the puppet config's own choice)",
  )
  p.add_argument("--warmup", type=int, default=20, help="linear warm-up steps of every stage")
  p.add_argument("--batch", type=int, default=4, help="global batch (default 4)")
  p.add_argument(
    "--schedule", choices=("constant", "cosine"), default="constant",
    help="learning rate after the warm-up: constant (default) or cosine decay to 0 over the stage",
  )  # fmt: skip
  p.add_argument(
    "--ema", type=float, default=0.0,
    help="EMA decay of the parameters (0: none, default); with it each stage exports its EMA",
  )  # fmt: skip
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--vae", default="", help="VAE folder (default: assets/puppet_vae)")
  p.add_argument(
    "--patch", type=int, default=0,
    help="the denoiser's spatial patch (config arg patch=; default 16 / the VAE's stride)",
  )  # fmt: skip
  p.add_argument(
    "--small", action="store_true",
    help="the `small` model (2 blocks x 64 wide; the end-to-end test's, seconds per stage)",
  )  # fmt: skip
  args = p.parse_args(argv)
  steps = [int(x) for x in args.steps.split(",")]
  lrs = [float(x) for x in args.lr.split(",")]
  trainable = args.trainable.split(",")
  if len(trainable) != 3 or set(trainable) - {"official", "all"}:
    p.error(f"--trainable {args.trainable!r}: give three of official|all, e.g. all,all,official")
  if len(steps) != 3 or len(lrs) != 3:
    print("train_puppet_model: error: --steps and --lr take three values", file=sys.stderr)
    return 2
  world, work, out = map(lambda x: pathlib.Path(x).absolute(), (args.world, args.workdir, args.out))
  work.mkdir(parents=True, exist_ok=True)
  o2a = [sys.executable, "-m", "o2a_jax.cli"]
  o2a_train = [sys.executable, str(pathlib.Path(__file__).absolute()), "_o2a_train"]
  vae = str(pathlib.Path(args.vae).absolute()) if args.vae else ""
  log: dict = {"command": "python " + " ".join([sys.argv[0], *(argv or sys.argv[1:])])}
  t_all = time.perf_counter()
  data = work / "data"
  if not (data / "dataset_info.json").exists():
    log["data_build_seconds"] = _run(
      o2a + ["data", "build", "official", str(world / "train.csv"), str(data), "--image-format",
             "png", "--quiet"]
    )  # fmt: skip
  prev = ""
  stages = []
  for i, stage in enumerate((1, 2, 3)):
    overrides = [
      f"--config.data.source={data}",
      f"--config.train.steps={steps[i]}",
      f"--config.optim.lr={lrs[i]}",
      f"--config.optim.warmup_steps={args.warmup}",
      f"--config.data.global_batch={args.batch}",
      f"--config.seed={args.seed + stage}",
      f"--config.train.ckpt_every={steps[i]}",
      "--config.train.log_every=5",
      f"--config.train.trainable={trainable[i]}",
    ]
    if args.schedule == "cosine":
      overrides += ["--config.optim.schedule=cosine_with_warmup",
                    f"--config.optim.total_steps={steps[i]}"]  # fmt: skip
    if args.ema:
      overrides.append(f"--config.optim.ema_decay={args.ema}")
    if prev:
      overrides.append(f"--config.init.checkpoint={prev}")
    wd = work / f"stage{stage}"
    arg = config_arg(stage, vae, args.small, args.patch)
    cmd = o2a_train + [f"--config=configs/o2a.py:{arg}", f"--workdir={wd}", *overrides]
    train_s = _run(cmd)
    t0 = time.perf_counter()
    export = work / f"stage{stage}_export"
    last, heads, drawing = export_stage(wd, export, ema=bool(args.ema))
    export_s = time.perf_counter() - t0
    losses = tb_losses(wd)
    stages.append(
      {
        "stage": stage,
        "command": " ".join(["o2a train", *cmd[3:]]) + "  (2-D-tap convolutions)",
        "steps": last,
        "train_seconds": train_s,
        "export_seconds": export_s,
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "loss_log": losses,
      }
    )
    print(f"stage {stage}: {last} steps in {train_s:.0f} s; loss {stages[-1]['loss_first']} -> "
          f"{stages[-1]['loss_last']}", flush=True)  # fmt: skip
    prev = str(export)
  log["stages"] = stages
  log["total_seconds"] = time.perf_counter() - t_all
  log["world"] = json.loads((world / "world.json").read_text())["config"]
  tmp = out.with_name(out.name + ".tmp")
  if tmp.exists():
    shutil.rmtree(tmp)
  shutil.copytree(prev, tmp)
  (tmp / "training.json").write_text(json.dumps(log, indent=1))
  # The VAE whose latent space the model learned: `o2a demo` and the evaluation check it.
  from o2a_jax.puppet import evaluate as E

  (tmp / E.HEADS_FILE).write_text(json.dumps(heads) + "\n")
  (tmp / E.POSE_DRAWING_FILE).write_text(drawing + "\n")

  vae_dir = pathlib.Path(vae or E.VAE_DIR)
  (tmp / E.VAE_HASH_FILE).write_text(
    f"{E.vae_sha256(vae_dir)}  {vae_dir / 'diffusion_pytorch_model.safetensors'}\n"
  )
  if out.exists():
    shutil.rmtree(out)
  os.replace(tmp, out)
  print(f"wrote {out} in {log['total_seconds']:.0f} s in total")
  return 0


if __name__ == "__main__":
  if sys.argv[1:2] == ["_o2a_train"]:
    sys.exit(o2a_train_in_process(sys.argv[2:]))
  sys.exit(main())
