"""The training step: batch encoding, random draws, loss, gradients, clipping, update.

Dims: B batch, F pixel frames, T latent frames, H/W height/width, h/w latent height/width,
S text tokens, C channels.

The functional API the training loop uses (everything returned is pure and jit-able):

  sc = step_config(config)                              # typed, checked, once
  graphs, state = init_train_state(model, vae, sc, seed=0, text_embeds=empty_prompt)
  train_step = make_train_step(graphs, sc)          # (state, batch) -> (state, metrics)
  shardings = state_shardings(state, mesh)
  step = jax.jit(train_step, in_shardings=(shardings, batch_sh), out_shardings=(shardings, None),
                 donate_argnums=0)
  model = merge_model(graphs, state)                     # a Denoiser for sampling / export

`state` is a `TrainState` pytree (checkpoint it with Orbax as is; `frozen`, `vae` and `text`
never change, so a checkpoint may also store them once). `batch` is a dict of arrays with the
fields of `data_pipeline.batch` (pixels; the VAE encoding happens inside the step).

Settings: a typed `StepConfig` built once from the run config by `step_config(config)`: the
stage (1, 2 or 3: the trainable set; stage 1 expects the model built with
`DenoiserConfig.stage1()`), `train.trainable`, `LossConfig` and `optim.OptimConfig`.

Numerics: trainable parameters are float32 master weights; the loss runs with them cast to the
model's `param_dtype` (bfloat16 compute when the model was built so), so gradients, clipping,
Adam moments and EMA stay float32. The VAE runs in float32 under `stop_gradient`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
import optax
from flax import nnx

from data_pipeline.batch import check_batch
from o2a_jax import config_lib, sharding
from o2a_jax.model import lora as lora_lib
from o2a_jax.model.config import DenoiserConfig
from o2a_jax.model.denoiser import TOKEN_REPLACE_FRAMES
from o2a_jax.train import loss as L
from o2a_jax.train import optim, trainable
from o2a_jax.vae.strides import latent_frames

POSE_SCALE_RULES = ("per_sample", "official_batch")


@flax.struct.dataclass
class TrainState:
  """Everything the step reads and writes, as one pytree.

  Attributes:
    step: int32 scalar, optimizer steps applied (skipped steps do not count).
    params: nnx.State of the trainable denoiser parameters, float32 master weights.
    frozen: nnx.State of everything else in the denoiser, in the model's `param_dtype`.
    vae: nnx.State of the (frozen) VAE, float32.
    text: (1, S, text_dim) the text embedding every sample gets (official: T5 of "").
    opt_state: the optax state of the trainable parameters only.
    rng: uint32[2] PRNG key; split once per step for the timestep, noise and TokenReplace draws.
    ema: nnx.State with the EMA of `params` (float32), or None when `optim.ema_decay` is 0.
    skipped: int32 scalar, steps skipped for a non-finite loss or gradient, in total.
    bad_in_row: int32 scalar, consecutive skipped steps (0 after a good step).
  """

  step: jax.Array
  params: Any
  frozen: Any
  vae: Any
  text: jax.Array
  opt_state: Any
  rng: jax.Array
  ema: Any
  skipped: jax.Array
  bad_in_row: jax.Array


class TrainGraphs(NamedTuple):
  """The static halves of the split modules (hashable; closed over by the step)."""

  model: nnx.GraphDef
  vae: nnx.GraphDef
  model_cfg: DenoiserConfig


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """The loss settings (official stage 2 values by default; `for_stage`), checked when built."""

  face_weight: float = 3.0
  token_replace_prob: float = 0.0  # per sample, clips with > 2 latent frames
  logit_mean: float = 0.0
  logit_std: float = 1.0
  # official: a plain mean over all elements, masked ones included (an official bug); see loss.py
  masked_mean: bool = False
  sigma_dtype: str = "float32"  # "bfloat16" rounds sigma as the official bf16 runs do
  # per_sample: pose scale 0 exactly for the samples with `pose_dropped`; official_batch: the
  # official rule: 0 for the whole batch iff its whole pose video is black.
  pose_scale_rule: str = "per_sample"

  def __post_init__(self):
    if self.pose_scale_rule not in POSE_SCALE_RULES:
      raise ValueError(
        f"config.loss.pose_scale_rule {self.pose_scale_rule!r} not in {POSE_SCALE_RULES}"
      )
    if not 0.0 <= self.token_replace_prob <= 1.0:
      raise ValueError(
        f"config.loss.token_replace_prob must be in [0, 1], got {self.token_replace_prob}"
      )
    if self.face_weight < 0 or self.logit_std <= 0:
      raise ValueError("config.loss: face_weight must be >= 0 and logit_std > 0")

  @classmethod
  def for_stage(cls, stage: int) -> LossConfig:
    """The official stage's values (three training stages, condition dropout, TokenReplace)."""
    trainable.check_stage(stage)
    return cls(
      face_weight=1.0 if stage == 3 else 3.0, token_replace_prob=0.2 if stage == 3 else 0.0
    )


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Everything the train step reads, typed and checked: built once from the run config
  (`step_config`); the ConfigDict stops there."""

  stage: int
  trainable: str  # "official" | "all" | "lora" (adapters only; set by config.lora.rank >= 1)
  loss: LossConfig
  optim: optim.OptimConfig


def step_config(config: mlc.ConfigDict) -> StepConfig:
  """The typed `StepConfig` of a run config (`stage`, `loss`, `optim`, `train.trainable`)."""
  stage = trainable.check_stage(config.stage)
  which = config.train.get("trainable", "official") if "train" in config else "official"
  if lora_config(config).enabled:
    if which != "official":
      raise ValueError(
        f"config.lora.rank >= 1 trains only the adapters; config.train.trainable={which!r} "
        "would also train base weights: leave it at 'official' or set config.lora.rank=0"
      )
    which = "lora"
  return StepConfig(
    stage=stage,
    trainable=which,
    loss=config_lib.from_section(LossConfig, config.get("loss"), "loss"),
    optim=config_lib.from_section(optim.OptimConfig, config.get("optim"), "optim"),
  )


def lora_config(config: mlc.ConfigDict) -> lora_lib.LoRAConfig:
  """The typed `config.lora` section (rank 0, no adapters, when the config has none)."""
  if "lora" not in config:
    return lora_lib.LoRAConfig()
  return config_lib.from_section(lora_lib.LoRAConfig, config.lora, "lora")


def default_loss_config(stage: int = 2) -> mlc.ConfigDict:
  """The `config.loss` section of `configs/` files: `LossConfig.for_stage(stage)`."""
  return mlc.ConfigDict(dataclasses.asdict(LossConfig.for_stage(stage)))


def _cast(tree, dtype):
  return jax.tree.map(
    lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree
  )


def init_train_state(
  model: nnx.Module,
  vae: nnx.Module,
  config: StepConfig,
  *,
  seed: int = 0,
  text_embeds: jax.Array | np.ndarray,
) -> tuple[TrainGraphs, TrainState]:
  """Splits `model` into trainable (cast to float32) and frozen parameters and builds the state.

  Args:
    model: a Denoiser; for stage 1 built with `DenoiserConfig.stage1()` (no prefix, no pose).
    vae: the WanVAE that encodes batches (kept frozen; used in float32).
    config: the typed step settings (`step_config(run_config)`).
    seed: seeds the step's PRNG key.
    text_embeds: (S, text_dim) or (1, S, text_dim), the prompt embedding of every sample (the
      official recipe always trains with the empty prompt, UMT5("") padded to 226 tokens).
  """
  stage = config.stage
  cfg = model.cfg
  if stage == 1 and (cfg.prefix_frame or cfg.pose_branch):
    raise ValueError(
      "stage 1 trains the model without prefix frame and pose branch: build it from "
      "DenoiserConfig.stage1() (or pass config.stage 2/3)"
    )
  if stage > 1 and not (cfg.prefix_frame and cfg.pose_branch):
    raise ValueError(f"stage {stage} needs the full model (prefix frame and pose branch)")
  text = jnp.asarray(text_embeds, jnp.float32)
  if text.ndim == 2:
    text = text[None]
  if text.ndim != 3 or text.shape[0] != 1 or text.shape[2] != cfg.text_dim:
    raise ValueError(f"text_embeds has shape {text_embeds.shape}; expected (S, {cfg.text_dim})")
  graphdef, params, frozen = trainable.split_params(model, stage, config.trainable)
  params = _cast(params, jnp.float32)
  vae_graph, vae_state = nnx.split(vae)
  tx = optim.make_optimizer(config.optim, params)
  state = TrainState(
    step=jnp.zeros((), jnp.int32),
    params=params,
    frozen=frozen,
    vae=_cast(vae_state, jnp.float32),
    text=text,
    opt_state=tx.init(params),
    rng=jax.random.PRNGKey(seed),
    ema=jax.tree.map(jnp.copy, params) if config.optim.ema_decay > 0 else None,
    skipped=jnp.zeros((), jnp.int32),
    bad_in_row=jnp.zeros((), jnp.int32),
  )
  return TrainGraphs(graphdef, vae_graph, cfg), state


def encode_batch(vae: nnx.Module, batch: dict) -> tuple[jax.Array, jax.Array]:
  """(x0 (B,T,h,w,16), ref_latents (B,1,h,w,32)): normalised VAE posterior means (official reference
  and mask encoding), with the VAE's own latent statistics (`vae.normalize`), as the sampler uses
  them.

  The reference and its outpainting mask (repeated to 3 channels, x2-1) are encoded like
  images in one VAE call and concatenated [reference | mask]. Float32, no gradient.
  """
  norm = lambda m: vae.normalize(m.astype(jnp.float32))
  video = jnp.asarray(batch["video"], jnp.float32)
  ref = jnp.asarray(batch["ref_image"], jnp.float32)
  mask = jnp.repeat(jnp.asarray(batch["ref_mask"], jnp.float32), 3, axis=-1) * 2.0 - 1.0
  b = video.shape[0]
  x0 = norm(vae.encode(video))
  images = norm(vae.encode(jnp.concatenate([ref, mask], axis=0)))  # 2B 1 h w 16
  ref_latents = jnp.concatenate([images[:b], images[b:]], axis=-1)
  return jax.lax.stop_gradient(x0), jax.lax.stop_gradient(ref_latents)


def pose_scale(batch: dict, rule: str = "per_sample") -> jax.Array:
  """(B,) float32 pose conditioning scale: 0 for dropped poses (official condition dropout)."""
  dropped = jnp.asarray(batch["pose_dropped"], bool)
  if rule == "per_sample":
    return jnp.where(dropped, 0.0, 1.0).astype(jnp.float32)
  if rule == "official_batch":
    pose = jnp.asarray(batch["pose_video"], jnp.float32)
    black = (jnp.max(pose) <= -0.99) | (jnp.max(jnp.abs(pose)) < 1e-6)
    return jnp.where(black, 0.0, 1.0) * jnp.ones(dropped.shape, jnp.float32)
  raise ValueError(f"pose scale rule {rule!r} not in {POSE_SCALE_RULES}")


def make_train_step(
  graphs: TrainGraphs, config: StepConfig
) -> Callable[[TrainState, dict], tuple[TrainState, dict]]:
  """The pure train step `(state, batch) -> (state, metrics)`.

  Metrics (float32 / int32 scalars): `loss`, `loss_base` and `loss_face` (loss = base + face),
  `mse` (unweighted squared error over the unmasked elements), `grad_norm` (before clipping),
  `lr` (used by this step), `skipped` (1 if this step was skipped), `bad_in_row` (skipped steps
  in a row, this one included; the state's counter, repeated here because the loop reads metrics
  after the state is donated to the next step), `token_replace` (fraction
  of samples), `sigma_mean`, `pose_scale_mean`.
  A non-finite loss or gradient leaves params, opt_state, ema and step unchanged and increments
  `skipped` and `bad_in_row`; the rng always advances.
  """
  lc, oc = config.loss, config.optim
  cfg = graphs.model_cfg
  compute_dtype = cfg.params_dtype
  schedule = optim.learning_rate_schedule(oc)

  def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
    b, f, _, _ = check_batch(batch)
    t_lat = latent_frames(f)
    vae = nnx.merge(graphs.vae, state.vae)
    x0, ref_latents = encode_batch(vae, batch)
    rng, k_u, k_noise, k_tr = jax.random.split(state.rng, 4)
    u = L.logit_normal(k_u, b, lc.logit_mean, lc.logit_std)
    noise = jax.random.normal(k_noise, x0.shape, jnp.float32)
    token_replace: jax.Array | bool = False
    if lc.token_replace_prob > 0 and t_lat > TOKEN_REPLACE_FRAMES:
      token_replace = jax.random.uniform(k_tr, (b,)) < lc.token_replace_prob
    scale = pose_scale(batch, lc.pose_scale_rule)
    text = jnp.broadcast_to(state.text, (b,) + state.text.shape[1:])
    if cfg.pose_branch:
      pose_video = jnp.asarray(batch["pose_video"], jnp.float32)
      ref_pose = jnp.asarray(batch["ref_pose"], jnp.float32)
    else:
      pose_video = ref_pose = None

    def loss_fn(params):
      model = nnx.merge(graphs.model, _cast(params, compute_dtype), state.frozen)

      def apply(x_t, t, tr):
        return model(
          x_t, t, text, ref_latents, pose_video, ref_pose, pose_scale=scale, token_replace=tr
        )

      return L.flow_matching_loss(
        apply,
        x0,
        noise,
        u,
        jnp.asarray(batch["face_mask"], jnp.float32),
        jnp.asarray(batch["ocr_mask"], jnp.float32),
        token_replace=token_replace,
        face_weight=lc.face_weight,
        masked_mean=lc.masked_mean,
        sigma_dtype=lc.sigma_dtype,
      )

    (loss, parts), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # Non-finite gradients are zeroed before the update so no NaN enters the arithmetic; the
    # update is then discarded anyway.
    grads = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
    tx = optim.make_optimizer(oc, state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)
    step = state.step + ok.astype(jnp.int32)
    ema = state.ema
    if ema is not None:
      d = optim.ema_decay(step, oc.ema_decay, oc.ema_start_step)
      ema = keep(jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params), ema)
    bad = (~ok).astype(jnp.int32)
    new_state = state.replace(
      step=step,
      params=keep(params, state.params),
      opt_state=keep(opt_state, state.opt_state),
      rng=rng,
      ema=ema,
      skipped=state.skipped + bad,
      bad_in_row=jnp.where(ok, 0, state.bad_in_row + 1),
    )
    metrics = {
      "loss": loss,
      **parts,
      "grad_norm": grad_norm,
      "lr": schedule(state.step),
      "skipped": bad,
      "bad_in_row": new_state.bad_in_row,
      "pose_scale_mean": jnp.mean(scale),
    }
    return new_state, metrics

  return train_step


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state: TrainState, mesh: jax.sharding.Mesh, table=None):
  """NamedShardings for `state` (a prefix tree for `jax.jit`): every parameter-like Variable
  (params, frozen, their optimizer moments, EMA) by its logical axes through `table` (default
  `o2a_jax.sharding.RULES`; `o2a train` passes the config's table); the rest replicated."""

  def one(x):
    if _is_var(x):
      names = x.get_metadata().get("out_sharding")
      if names is not None:
        spec = sharding.logical_to_spec(names, sharding.RULES if table is None else table)
        return jax.sharding.NamedSharding(mesh, spec)
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  return jax.tree.map(one, state, is_leaf=_is_var)


def merge_model(graphs: TrainGraphs, state: TrainState, *, ema: bool = False) -> nnx.Module:
  """The Denoiser with the current (or EMA) trainable parameters, for sampling or export."""
  if ema and state.ema is None:
    raise ValueError("this run keeps no EMA (config.optim.ema_decay = 0); use ema=False")
  params = state.ema if ema else state.params
  return nnx.merge(graphs.model, _cast(params, graphs.model_cfg.params_dtype), state.frozen)
