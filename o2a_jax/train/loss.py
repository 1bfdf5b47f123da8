"""The official flow-matching training loss (`FlowMatching.get_loss_wanx`, official flow-matching
loss, TokenReplace training).

Dims: B batch, T latent frames, H/W pixel height/width, h/w latent height/width, C channels.

All random draws are explicit inputs (`u`, `noise`, the TokenReplace coin), so the loss is a
pure function that the golden fixture (`tests/fixtures/loss_tiny`) pins down:

  u ~ sigmoid(N(mean, std)) per sample     (logit-normal, no shift)
  idx = floor(1000 u), t = 1000 - idx        (t in 1..1000, the model's timestep)
  sigma = t / 1000
  x_t = (1 - sigma) x0 + sigma noise,   target = noise - x0
  TokenReplace samples: the first 2 latent frames of x_t are the clean x0 and leave the loss
  loss_el = (v - target)^2 * ocr * token_mask * (1 + (face_weight - 1) * face)
  loss = mean(loss_el) over all B*T*h*w*C elements (official; masked elements count, official bug:
  loss mean over masked elements)

`masked_mean=True` divides instead by the number of unmasked elements (ocr * token_mask); it
is not the official recipe. The plain mean is the default because it is what the released
models were trained with: it only rescales a sample's loss by its unmasked fraction (6/8 for a
TokenReplace clip of 8 latent frames), which Adam largely absorbs; it is not a wrong gradient
direction.

Sigma is computed in float32. The official code casts sigma to the training dtype, which in
its bfloat16 runs rounds sigma to 8 mantissa bits; the float32 fixture matches float32 sigma
(bfloat16 sigma is off by ~4e-5 relative on it), and `sigma_dtype="bfloat16"` reproduces the
bf16 rounding for a faithful bf16 re-run.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from o2a_jax.model.denoiser import TOKEN_REPLACE_FRAMES

NUM_TRAIN_TIMESTEPS = 1000


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
  """Source indices of PyTorch's `F.interpolate(mode="nearest")`: min(floor(i * in/out), in-1).

  The scale is computed in float32 as PyTorch does (`(float)in / out`).
  """
  scale = np.float32(n_in) / np.float32(n_out)
  src = np.floor(np.arange(n_out, dtype=np.float32) * scale).astype(np.int64)
  return np.minimum(src, n_in - 1)


def resize_mask_nearest(mask: jax.Array, h: int, w: int) -> jax.Array:
  """(B, T, H, W) pixel-resolution mask -> (B, T, h, w), nearest, per latent frame."""
  if mask.ndim != 4:
    raise ValueError(f"mask has shape {mask.shape}; expected (B, T, H, W)")
  rows = nearest_indices(mask.shape[2], h)
  cols = nearest_indices(mask.shape[3], w)
  return mask[:, :, rows][:, :, :, cols]


def logit_normal(key: jax.Array, batch: int, mean: float = 0.0, std: float = 1.0) -> jax.Array:
  """u = sigmoid(N(mean, std)), one per sample, float32 (B,)."""
  return jax.nn.sigmoid(mean + std * jax.random.normal(key, (batch,), jnp.float32))


def timesteps_from_u(u: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(t, sigma) for the shift-1 scheduler: idx = floor(1000 u), t = 1000 - idx, sigma = t/1000.

  idx is clipped to [0, 999] (u rounds to 1.0 in float32 for draws beyond ~17 sigma; the
  official table lookup would fail there).
  """
  idx = jnp.clip(jnp.floor(u.astype(jnp.float32) * NUM_TRAIN_TIMESTEPS), 0, NUM_TRAIN_TIMESTEPS - 1)
  t = NUM_TRAIN_TIMESTEPS - idx
  return t, t / NUM_TRAIN_TIMESTEPS


def flow_matching_loss(
  apply: Callable[[jax.Array, jax.Array, jax.Array | bool], jax.Array],
  x0: jax.Array,
  noise: jax.Array,
  u: jax.Array,
  face_mask: jax.Array,
  ocr_mask: jax.Array,
  *,
  token_replace: jax.Array | bool = False,
  face_weight: float = 3.0,
  masked_mean: bool = False,
  sigma_dtype: str = "float32",
) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The official flow-matching loss and its parts.

  Args:
    apply: `apply(x_t, t, token_replace) -> velocity (B, T, h, w, C)`; the denoiser with its
      conditioning bound (text, reference latents, pose video, reference pose, pose scale).
    x0: clean normalised latents (B, T, h, w, C).
    noise: standard normal noise like x0.
    u: (B,) logit-normal draws in (0, 1).
    face_mask: (B, T, H, W) face/hand weight mask at pixel resolution (1 = weighted).
    ocr_mask: (B, T, H, W) text-box mask at pixel resolution (0 = excluded).
    token_replace: False, True (whole batch) or a (B,) bool array: those samples get their
      first 2 latent frames clean, excluded from the loss, and the t = 0 modulation there.
    face_weight: loss weight inside the face mask (official 3.0 stages 1-2, 1.0 stage 3).
    masked_mean: divide by the number of unmasked elements instead of all (not official).
    sigma_dtype: "float32" or "bfloat16" (the official bf16 runs' rounding of sigma).

  Returns:
    (loss, parts): float32 scalar loss and a dict of float32 scalars: `loss_base` (the
    unweighted part), `loss_face` (the extra face weighting; loss = base + face), `mse` (plain
    mean squared error over the unmasked elements), `sigma_mean`, `token_replace` (fraction).
  """
  if x0.ndim != 5 or noise.shape != x0.shape:
    raise ValueError(f"x0 {x0.shape} and noise {noise.shape} must both be (B, T, h, w, C)")
  b, t_lat, h, w, _ = x0.shape
  for name, m in (("face_mask", face_mask), ("ocr_mask", ocr_mask)):
    if m.ndim != 4 or m.shape[:2] != (b, t_lat):
      raise ValueError(f"{name} has shape {m.shape}; expected ({b}, {t_lat}, H, W)")
  if sigma_dtype not in ("float32", "bfloat16"):
    raise ValueError(f"sigma_dtype must be float32 or bfloat16, got {sigma_dtype!r}")
  x0 = x0.astype(jnp.float32)
  noise = noise.astype(jnp.float32)
  t, sigma = timesteps_from_u(u)
  sigma = sigma.astype(sigma_dtype).astype(jnp.float32)
  s = sigma[:, None, None, None, None]
  x_t = (1 - s) * x0 + s * noise
  target = noise - x0

  if isinstance(token_replace, (bool, np.bool_)):
    tr = jnp.full((b,), bool(token_replace))
  else:
    tr = jnp.asarray(token_replace, bool)
    if tr.shape != (b,):
      raise ValueError(f"token_replace has shape {tr.shape}; expected ({b},)")
  clean = tr[:, None] & (jnp.arange(t_lat) < TOKEN_REPLACE_FRAMES)[None, :]  # B T
  clean = clean[:, :, None, None, None]
  x_t = jnp.where(clean, x0, x_t)
  token_mask = 1.0 - clean.astype(jnp.float32)

  v = apply(x_t, t, token_replace).astype(jnp.float32)
  se = jnp.square(v - target)
  face = resize_mask_nearest(face_mask.astype(jnp.float32), h, w)[..., None]
  ocr = resize_mask_nearest(ocr_mask.astype(jnp.float32), h, w)[..., None]
  valid = ocr * token_mask  # B T h w 1
  base = se * valid
  extra = base * ((face_weight - 1.0) * face)
  n_all = se.size
  denom = jnp.maximum(jnp.sum(jnp.broadcast_to(valid, se.shape)), 1.0) if masked_mean else n_all
  loss_base = jnp.sum(base) / denom
  loss_face = jnp.sum(extra) / denom
  n_valid = jnp.maximum(jnp.sum(jnp.broadcast_to(valid, se.shape)), 1.0)
  parts = {
    "loss_base": loss_base,
    "loss_face": loss_face,
    "mse": jnp.sum(base) / n_valid,
    "sigma_mean": jnp.mean(sigma),
    "token_replace": jnp.mean(tr.astype(jnp.float32)),
  }
  return loss_base + loss_face, parts
