"""A training run's checkpoint as a model: what `o2a convert run` writes.

`load_run(workdir)` rebuilds the run from the config saved with its checkpoint and restores it:
full runs hold every parameter in the checkpoint; LoRA runs hold the adapters only, so their
frozen base is read again from the run's `config.init.checkpoint` (or `base`). The result is a
Denoiser (with its adapters for LoRA runs) for `save_official`, `save_native` or
`lora.adapter_state_dict`.
"""

from __future__ import annotations

import pathlib

import jax
import ml_collections as mlc

from o2a_jax.train import checkpoints as ckpt_lib
from o2a_jax.train import step as step_lib
from o2a_jax.train import trainer


def _tuples(x):
  """JSON lists back to the tuples the configs hold."""
  if isinstance(x, dict):
    return {k: _tuples(v) for k, v in x.items()}
  if isinstance(x, list):
    return tuple(_tuples(v) for v in x)
  return x


def run_config(workdir, step: int | None = None) -> tuple[mlc.ConfigDict, int]:
  """(the config saved with the run's checkpoint `step` (default: the latest), that step)."""
  folder = pathlib.Path(workdir) / "checkpoints"
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} does not exist: is {str(workdir)!r} an `o2a train` workdir?")
  ckpts = ckpt_lib.Checkpoints(folder, async_save=False)
  try:
    steps = ckpts.all_steps()
    if not steps:
      raise FileNotFoundError(f"{folder} holds no checkpoint")
    step = max(steps) if step is None else step
    if step not in steps:
      raise ValueError(f"--step {step}: {folder} holds steps {sorted(steps)}")
    saved = ckpts.saved_config(step)
  finally:
    ckpts.close()
  if saved is None:
    raise ValueError(f"checkpoint step {step} in {folder} has no readable config")
  return mlc.ConfigDict(_tuples(saved)), step


def load_run(
  workdir, *, step: int | None = None, ema: bool = False, base: str | None = None, mesh=None
):
  """(Denoiser, run config, step) of a run's checkpoint, on `mesh` (default: FSDP over all of
  this process's devices)."""
  config, step = run_config(workdir, step)
  lora = step_lib.lora_config(config).enabled
  if lora:
    if base:
      config.init.checkpoint = str(base)
    if not config.init.checkpoint or not pathlib.Path(config.init.checkpoint).exists():
      raise FileNotFoundError(
        f"this LoRA run's checkpoints hold only adapters; its base model "
        f"{config.init.checkpoint!r} (config.init.checkpoint) is not here: give --base PATH"
      )
  else:
    config.init.checkpoint = ""  # the checkpoint holds every parameter; the template is shapes
  if not (config.vae.path and pathlib.Path(config.vae.path).is_dir()):
    # The VAE is not exported and need not be on this machine, but a full run's checkpoint holds
    # it, so the template needs its shapes: the run's own folder where it is here (a VAE of
    # another architecture, the puppet toy's), else the default one of this model size.
    config.vae.path = ""
  config.train.mesh_shape = (1, -1, 1, 1)
  if "mesh_shape" in config:
    config.mesh_shape = config.train.mesh_shape
  config.data.source = ""  # no data is read
  s = trainer.setup(config, mesh=mesh)
  ckpts = ckpt_lib.Checkpoints(
    pathlib.Path(workdir) / "checkpoints", async_save=False, skip=trainer.checkpoint_skip(config)
  )
  try:
    state = ckpts.restore(s.state, None, step=step)
  finally:
    ckpts.close()
  with jax.set_mesh(s.mesh):
    model = step_lib.merge_model(s.graphs, state, ema=ema)
  return model, config, step
