"""Sampling one chunk, as the official `WanPipeline` call does (official reference and mask
encoding, official flow-matching scheduler, reference and pose guidance, TokenReplace at sampling).

Dims: F pixel frames, T latent frames, H/W height/width (pixels), h/w latent height/width,
S text tokens.

`generate_chunk` encodes the reference image and the outpainting mask with the VAE (the mask as
a 3-channel image, `mask * 2 - 1`), builds the black-reference latents, optionally re-encodes
the 5 TokenReplace context frames into 2 clean latent frames, runs the guided flow-matching
Euler loop as one jitted program (a `fori_loop` over steps, all guidance passes in one batched
model call per step) and decodes the result.
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.dims import dims
from o2a_jax.model.denoiser import TOKEN_REPLACE_FRAMES
from o2a_jax.sampling import guidance
from o2a_jax.sampling.euler import euler_step
from o2a_jax.sampling.schedule import sigmas as make_sigmas
from o2a_jax.vae.strides import latent_frames, latent_shape, pixel_frames

# TokenReplace context: the denoiser keeps 2 latent frames clean, 5 pixel frames re-encoded.
CONTEXT_LATENTS = TOKEN_REPLACE_FRAMES
CONTEXT_FRAMES = pixel_frames(CONTEXT_LATENTS)

# Progress hooks of the running `generate_chunk(on_step=...)` calls, by call token. The jitted
# loop reports (token, step) through the fixed function `_report_step`, so a new hook never
# changes the compiled program, and concurrent calls (threads) each reach their own hook.
_HOOKS: dict[int, object] = {}
_TOKENS = itertools.count(1)


def _report_step(token, i):
  hook = _HOOKS.get(int(token))
  if hook is not None:
    hook(int(i))


def _check(name, arr, shape, lo=None, hi=None):
  if tuple(arr.shape) != tuple(shape):
    raise ValueError(f"{name} has shape {tuple(arr.shape)}; expected {tuple(shape)}")
  if lo is not None and (np.nanmin(arr) < lo - 1e-6 or np.nanmax(arr) > hi + 1e-6):
    raise ValueError(f"{name} values must lie in [{lo}, {hi}]")
  if not np.isfinite(arr).all():
    raise ValueError(f"{name} contains NaN or infinite values")


def _pixels(image_u8: np.ndarray) -> jax.Array:
  """uint8 (..., 3) -> float32 in [-1, 1], as diffusers' VideoProcessor.preprocess."""
  return jnp.asarray(np.asarray(image_u8, np.float32) / 255.0 * 2.0 - 1.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "n", "token_replace", "report"))
def _denoise(
  graphdef,
  state,
  x,
  sig,
  ref,
  pose,
  ref_pose,
  text,
  scales,
  *,
  n,
  token_replace,
  image_guidance,
  pose_guidance,
  report=False,
  token=0,
):
  """The whole Euler loop: x (B, T, h, w, C) float32 noise (or context + noise) -> latents."""
  model = nnx.merge(graphdef, state)
  b = x.shape[0]
  start = CONTEXT_LATENTS if token_replace else 0

  def step(i, x):
    xs = jnp.concatenate([x] * n, axis=0)
    t = jnp.full((n * b,), sig[i] * 1000.0, jnp.float32)
    eps = model(
      xs.astype(model.cfg.compute_dtype),
      t,
      text,
      ref,
      pose,
      ref_pose,
      pose_scale=scales,
      token_replace=token_replace,
    )
    v = guidance.combine(eps, n, image_guidance, pose_guidance)
    x = euler_step(x, v, sig[i], sig[i + 1], keep=start)
    if report:
      jax.debug.callback(_report_step, token, i)
    return x

  return jax.lax.fori_loop(0, sig.shape[0] - 1, step, x)


@dims(
  image="H W 3",
  mask="H W",
  pose_video="F H W 3",
  ref_pose="1 H W 3",
  text_embeds="S _",
  negative_text_embeds="S _",
  noise="T h w _",
  prev_frames="_ H W 3",
  returns="F H W 3",
)
def generate_chunk(
  model,
  vae,
  image: np.ndarray,
  mask: np.ndarray,
  pose_video: np.ndarray,
  ref_pose: np.ndarray,
  text_embeds: np.ndarray,
  negative_text_embeds: np.ndarray,
  noise: np.ndarray,
  *,
  steps: int = 30,
  shift: float = 7.0,
  image_guidance: float = 2.5,
  pose_guidance: float = 1.5,
  pose_scale: float = 1.0,
  prev_frames: np.ndarray | None = None,
  on_step=None,
) -> np.ndarray:
  """Generates one chunk of F frames; returns (F, H, W, 3) float32 in [-1, 1].

  Args:
    image: uint8 (H, W, 3) reference, already at the output size. mask: float (H, W) in [0, 1]; 1 =
    region the model must outpaint. pose_video: (F, H, W, 3) rendered driving poses in [-1, 1], F =
    4k + 1. ref_pose: (1, H, W, 3) the rendered reference pose in [-1, 1]. text_embeds,
    negative_text_embeds: (S, text_dim) prompt and negative-prompt embeddings. noise: (T, h, w, 16)
    initial latents, T = (F - 1) // 4 + 1. steps, shift: Euler steps and the scheduler shift.
    image_guidance, pose_guidance: the official guidance scales (official reference and pose
    guidance). pose_scale: the official `conditioning_scale` of the conditional passes. prev_frames:
    uint8 (5, H, W, 3) TokenReplace context frames, or None. on_step: optional host function called
    with the step index after each Euler step (from
      inside the jitted loop, e.g. to advance a progress bar).
  """
  image, mask = np.asarray(image), np.asarray(mask)
  pose_video, ref_pose = np.asarray(pose_video), np.asarray(ref_pose)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"image must be uint8 (H, W, 3), got {image.dtype}{tuple(image.shape)}")
  hh, ww = image.shape[:2]
  if hh % 16 or ww % 16:
    raise ValueError(f"image size {hh}x{ww} must be a multiple of 16 in both sides")
  f = pose_video.shape[0] if pose_video.ndim == 4 else 0
  if f < 1 or (f - 1) % 4:
    raise ValueError(
      f"pose_video must be (F, {hh}, {ww}, 3) with F = 4k + 1, got {tuple(pose_video.shape)}"
    )
  t = latent_frames(f)
  _check("mask", mask, (hh, ww), 0.0, 1.0)
  _check("pose_video", pose_video, (f, hh, ww, 3), -1.0, 1.0)
  _check("ref_pose", ref_pose, (1, hh, ww, 3), -1.0, 1.0)
  _check("noise", np.asarray(noise), latent_shape(f, hh, ww, vae.cfg.spatial_factor))
  text_embeds, negative_text_embeds = np.asarray(text_embeds), np.asarray(negative_text_embeds)
  if text_embeds.ndim != 2 or negative_text_embeds.shape != text_embeds.shape:
    raise ValueError(
      f"text_embeds {tuple(text_embeds.shape)} and negative_text_embeds "
      f"{tuple(negative_text_embeds.shape)} must both be (S, text_dim)"
    )
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")

  # Reference, mask and black-reference latents (official reference and mask encoding).
  enc = lambda pixels: vae.normalize(vae.encode(pixels[None, None]))[0]  # (H, W, 3) -> (1, h, w, C)
  ref_lat = enc(_pixels(image))
  mask_px = jnp.repeat(jnp.asarray(mask, jnp.float32)[..., None], 3, axis=-1) * 2.0 - 1.0
  mask_lat = enc(mask_px)
  black = enc(-jnp.ones((hh, ww, 3), jnp.float32))
  ref_latents = jnp.concatenate([ref_lat, mask_lat], axis=-1)[None]  # 1 1 h w 2C
  black_latents = jnp.concatenate([black, black], axis=-1)[None]

  x = jnp.asarray(noise, jnp.float32)[None]
  token_replace = prev_frames is not None
  if token_replace:
    prev_frames = np.asarray(prev_frames)
    if prev_frames.shape != (CONTEXT_FRAMES, hh, ww, 3) or prev_frames.dtype != np.uint8:
      raise ValueError(
        f"prev_frames must be uint8 ({CONTEXT_FRAMES}, {hh}, {ww}, 3), got "
        f"{prev_frames.dtype}{tuple(prev_frames.shape)}"
      )
    if t <= CONTEXT_LATENTS:
      raise ValueError(
        f"TokenReplace needs more than {CONTEXT_LATENTS} latent frames "
        f"(F >= 9 pixel frames), got F = {f}"
      )
    ctx = vae.normalize(vae.encode(_pixels(prev_frames)[None]))  # 1 2 h w C
    x = jnp.concatenate([ctx.astype(jnp.float32), x[:, CONTEXT_LATENTS:]], axis=1)

  g = guidance.Guidance(float(image_guidance), float(pose_guidance))
  n = g.passes
  ref, pose, rpose, text, scales = guidance.pass_inputs(
    n,
    ref_latents,
    black_latents,
    jnp.asarray(pose_video)[None],
    jnp.asarray(ref_pose)[None],
    jnp.asarray(text_embeds)[None],
    jnp.asarray(negative_text_embeds)[None],
    pose_scale,
  )
  graphdef, state = nnx.split(model)
  sig = jnp.asarray(make_sigmas(steps, shift))
  token = next(_TOKENS)
  if on_step is not None:
    _HOOKS[token] = on_step
  try:
    latents = _denoise(
      graphdef,
      state,
      x,
      sig,
      ref,
      pose,
      rpose,
      text,
      scales,
      n=n,
      token_replace=token_replace,
      image_guidance=g.image,
      pose_guidance=g.pose,
      report=on_step is not None,
      token=token,
    )
    if on_step is not None:
      jax.block_until_ready(latents)  # every report arrives while the hook is installed
  finally:
    _HOOKS.pop(token, None)
  video = vae.decode(vae.denormalize(latents.astype(jnp.float32)))
  return np.asarray(video[0], np.float32)
