"""Optimizers and learning-rate schedules from the `config.optim` section (official optimiser and
schedule).

What the official trainer really runs: the scripts pass `--optimizer adam`, but the trainer (T2,
after `get_scheduler`'s preparation) only accepts "prodigy" or "adamw" and otherwise logs
"Defaulting to adamw", so the released models were trained with `torch.optim.AdamW` over
`model.parameters()` (decoupled weight decay 1e-4 on every parameter that has a gradient, biases and
norms included). The grouped Adam with coupled L2 decay that official optimiser and schedule
describes (`create_optimizer`, T2:273-316: decay only on parameters with ndim > 1 whose name does
not end in `.bias`) is defined there but never called. Both are available:

  name="adamw"    torch AdamW: p -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * p)   (default)
  name="adam_l2"  torch Adam with weight_decay: g += wd * p, then Adam (coupled L2)

`decay_mask` picks the decayed parameters: "all" (what torch AdamW over model.parameters()
does), "matrices" (the `create_optimizer` groups: official ndim > 1 and not `.bias`), or
"auto" = "all" for adamw and "matrices" for adam_l2. Gradients are clipped to a global norm
(`clip_grad_norm`, 0 = off) before the optimizer, as `accelerator.clip_grad_norm_` requests.
The schedule is diffusers' `constant_with_warmup` (lr * step / warmup, then lr): the first
update has learning rate 0, as officially. Only trainable parameters are ever passed to the
optimizer, so frozen ones get no state.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections as mlc
import optax
from flax import nnx

from o2a_jax.model import param_names as layout

OPTIMIZERS = ("adamw", "adam_l2")
DECAY_MASKS = ("auto", "all", "matrices")
SCHEDULES = ("constant_with_warmup", "cosine_with_warmup")


@dataclasses.dataclass(frozen=True)
class OptimConfig:
  """The optimizer settings (the official run's values by default), checked when built."""

  name: str = "adamw"  # adamw | adam_l2 (see module docstring)
  lr: float = 1e-5
  b1: float = 0.9
  b2: float = 0.95
  eps: float = 1e-8
  weight_decay: float = 1e-4
  decay_mask: str = "auto"  # auto | all | matrices
  schedule: str = "constant_with_warmup"  # or cosine_with_warmup (decays to 0 at total_steps)
  warmup_steps: int = 5000  # optimizer steps (official: 5000 x num_processes scheduler ticks)
  total_steps: int = 0  # only for cosine_with_warmup
  clip_grad_norm: float = 1.0  # global-norm clipping before the update; 0 = off
  ema_decay: float = 0.0  # 0 = no EMA (the official run passes --ema_decay 0.999 without --use_ema)
  ema_start_step: int = 0

  def __post_init__(self):
    def need(cond, msg):
      if not cond:
        raise ValueError(f"config.optim: {msg}")

    need(self.name in OPTIMIZERS, f"name {self.name!r} not in {OPTIMIZERS}")
    need(self.decay_mask in DECAY_MASKS, f"decay_mask {self.decay_mask!r} not in {DECAY_MASKS}")
    need(self.schedule in SCHEDULES, f"schedule {self.schedule!r} not in {SCHEDULES}")
    need(self.lr > 0, f"lr must be positive, got {self.lr}")
    need(
      0 <= self.b1 < 1 and 0 <= self.b2 < 1, f"betas must be in [0, 1), got ({self.b1}, {self.b2})"
    )
    need(self.eps > 0 and self.weight_decay >= 0, "eps must be positive and weight_decay >= 0")
    need(
      self.warmup_steps >= 0 and self.clip_grad_norm >= 0, "warmup_steps and clip_grad_norm >= 0"
    )
    need(0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1), got {self.ema_decay}")
    need(
      self.schedule != "cosine_with_warmup" or self.total_steps > self.warmup_steps,
      "cosine_with_warmup needs total_steps > warmup_steps",
    )


def default_optim_config() -> mlc.ConfigDict:
  """The `config.optim` section of `configs/` files: `OptimConfig`'s defaults."""
  return mlc.ConfigDict(dataclasses.asdict(OptimConfig()))


def learning_rate_schedule(c: OptimConfig) -> optax.Schedule:
  """lr(step) for optimizer step `step` (0-based), as diffusers' schedulers compute it."""
  warmup = int(c.warmup_steps)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    ramp = step / max(warmup, 1) if warmup else jnp.float32(1.0)
    if c.schedule == "constant_with_warmup":
      after = jnp.float32(1.0)
    else:
      progress = (step - warmup) / max(int(c.total_steps) - warmup, 1)
      after = 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(progress, 0.0, 1.0)))
    return c.lr * jnp.where(step < warmup, ramp, after)

  return schedule


def matrix_mask(params: nnx.State) -> nnx.State:
  """True where the official `create_optimizer` decays: official ndim > 1, name not `.bias`."""
  flat = {".".join(map(str, p)): v for p, v in params.flat_state()}
  shapes = {p: tuple(v.get_value().shape) for p, v in flat.items()}
  decay: dict[str, list[bool]] = {}
  for e in layout.entries(shapes):
    tshape = layout.torch_shape(e, shapes[e.path])
    decay.setdefault(e.path, []).append(len(tshape) > 1 and not e.key.endswith(".bias"))
  mixed = sorted(p for p, f in decay.items() if len(set(f)) > 1)
  if mixed:
    raise ValueError(f"weight-decay groups differ between layers of {mixed}")
  flat = dict(nnx.to_flat_state(params))
  for path, var in flat.items():
    flat[path] = var.replace(value=decay[".".join(map(str, path))][0])
  return nnx.from_flat_state(flat)


def make_optimizer(c: OptimConfig, params: nnx.State) -> optax.GradientTransformation:
  """The optax transformation for the trainable `params` (an nnx.State of float32 arrays)."""
  mask_kind = c.decay_mask
  if mask_kind == "auto":
    mask_kind = "all" if c.name == "adamw" else "matrices"
  mask = matrix_mask(params) if mask_kind == "matrices" else None
  schedule = learning_rate_schedule(c)
  parts = []
  if c.clip_grad_norm > 0:
    parts.append(optax.clip_by_global_norm(c.clip_grad_norm))
  decay = optax.add_decayed_weights(c.weight_decay, mask=mask)
  adam = optax.scale_by_adam(b1=c.b1, b2=c.b2, eps=c.eps)
  if c.name == "adam_l2":
    parts += [decay, adam]
  else:
    parts += [adam, decay]
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)


def ema_decay(step: jax.Array, decay: float, start_step: int) -> jax.Array:
  """diffusers `EMAModel.get_decay` (no warm-up): 0 until start, then min((1+s)/(10+s), decay)
  with s = step - start_step - 1, for the `step`-th optimizer step (1-based)."""
  s = jnp.asarray(step, jnp.float32) - start_step - 1
  return jnp.where(s <= 0, 0.0, jnp.minimum((1 + s) / (10 + s), decay))
