"""The training step: batch encoding, random draws, loss, gradients, clipping, update.

Dims: B batch, F pixel frames, T latent frames, H/W height/width, C channels.

The functional API the training loop uses (everything here is pure and jit-able):

  graphs, state = init_train_state(model, vae, config, seed=0)
  train_step = make_train_step(graphs, config)          # (state, batch) -> (state, metrics)
  step = jax.jit(train_step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                 donate_argnums=0)                       # shardings = state_shardings(state, mesh)
  model = merge_model(graphs, state)                     # a Denoiser for sampling / export

`state` is a `TrainState` pytree (checkpoint it with Orbax as is; `frozen` and `vae` never change,
so a checkpoint may also store them once). `batch` is a dict of arrays with the fields of
`data_pipeline.batch` (pixels; the VAE encoding happens inside the step).

Config sections read: `config.model` (DenoiserConfig fields), `config.stage` (1, 2 or 3: the
trainable set and the stage-1 model variant), `config.loss` (`default_loss_config`) and
`config.optim` (`o2a_jax.train.optim.default_optim_config`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import ml_collections as mlc
from flax import nnx


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree.

  Attributes:
    step: int32 scalar, optimizer steps applied (skipped steps do not count).
    params: nnx.State of the trainable denoiser parameters, float32 master weights.
    frozen: nnx.State of the frozen denoiser parameters in the model's `param_dtype`.
    vae: nnx.State of the (frozen) VAE parameters, float32.
    opt_state: the optax state of the trainable parameters only.
    rng: PRNG key; split once per step for the timestep, noise and TokenReplace draws.
    ema: nnx.State with the EMA of `params` (float32), or None when EMA is off.
    skipped: int32 scalar, steps skipped for a non-finite loss or gradient, in total.
    bad_in_row: int32 scalar, consecutive skipped steps (0 after a good step).
  """

  step: jax.Array
  params: Any
  frozen: Any
  vae: Any
  opt_state: Any
  rng: jax.Array
  ema: Any
  skipped: jax.Array
  bad_in_row: jax.Array


class TrainGraphs(NamedTuple):
  """The static halves of the split modules (hashable; closed over by the step)."""

  model: nnx.GraphDef
  vae: nnx.GraphDef


def default_loss_config(stage: int = 2) -> mlc.ConfigDict:
  """The `config.loss` section with the official stage's values (spec §7.1, §7.9-7.10)."""
  raise NotImplementedError


def init_train_state(
  model: nnx.Module, vae: nnx.Module, config: mlc.ConfigDict, *, seed: int = 0
) -> tuple[TrainGraphs, TrainState]:
  """Splits `model` into trainable (cast to float32) and frozen parameters and builds the state.

  Args:
    model: a Denoiser built for `config.stage` (stage 1: without prefix frame and pose branch).
    vae: the WanVAE used to encode batches (kept frozen, float32).
    config: the run config (reads `stage`, `loss`, `optim`).
    seed: seeds the step's PRNG key.
  """
  raise NotImplementedError


def make_train_step(
  graphs: TrainGraphs, config: mlc.ConfigDict
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The pure train step `(state, batch) -> (state, metrics)`.

  Metrics (float32 / int32 scalars): `loss`, `loss_mse` (unweighted mean squared error over the
  loss mask), `grad_norm` (before clipping), `lr`, `skipped` (1 if this step was skipped),
  `token_replace` (1 if the TokenReplace draw was on), `sigma_mean`.
  A non-finite loss or gradient leaves params, opt_state and ema unchanged, increments
  `skipped` and `bad_in_row`; the rng always advances.
  """
  raise NotImplementedError


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh):
  """NamedShardings for every leaf of `state`: parameters (and their optimizer moments and
  EMA) by their logical axes through `o2a_jax.sharding.RULES`; scalars and keys replicated."""
  raise NotImplementedError


def merge_model(graphs: TrainGraphs, state: TrainState, *, ema: bool = False) -> nnx.Module:
  """The Denoiser with the current (or EMA) trainable parameters, for sampling or export."""
  raise NotImplementedError
