"""Reference-and-pose classifier-free guidance of the official pipeline (official reference and pose
guidance).

Dims: G guidance passes, B batch, T latent frames, H/W height/width, C channels, S text tokens.

With both black-reference and black-pose guidance on (the official scripts' setting):
- three passes when image_guidance > 1 and pose_guidance > 1:
    eps = eps_u + pose_g * (eps_r - eps_u) + image_g * (eps_c - eps_r)
  with eps_c = (reference, poses, prompt), eps_r = (black reference, poses, prompt) and
  eps_u = (black reference, dropped poses (all -1, scale 0), negative prompt);
- two passes when only image_guidance > 1: eps = eps_u + image_g * (eps_c - eps_u);
- one pass (no guidance) when image_guidance <= 1, whatever pose_guidance is.
The passes of one step run as one batched model call (the pose encoder normalises each sample
on its own, so batching changes nothing).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class Guidance:
  """The guidance setting, built once at the top and passed down: scales and pass count."""

  image: float = 2.5
  pose: float = 1.5

  @property
  def passes(self) -> int:
    return num_passes(self.image, self.pose)


def num_passes(image_guidance: float, pose_guidance: float) -> int:
  if image_guidance <= 1.0:
    return 1
  return 3 if pose_guidance > 1.0 else 2


def pass_inputs(
  n: int, ref_latents, black_latents, pose_video, ref_pose, text, negative_text, pose_scale: float
):
  """Batched (G*B, ...) conditioning for the n passes, ordered [c, u, r][:n]."""
  dropped_video = -jnp.ones_like(pose_video)
  dropped_ref = -jnp.ones_like(ref_pose)
  cond = dict(ref=ref_latents, pose=pose_video, ref_pose=ref_pose, text=text, scale=pose_scale)
  uncond = dict(
    ref=black_latents, pose=dropped_video, ref_pose=dropped_ref, text=negative_text, scale=0.0
  )
  black_ref = dict(
    ref=black_latents, pose=pose_video, ref_pose=ref_pose, text=text, scale=pose_scale
  )
  passes = [cond, uncond, black_ref][:n]
  b = ref_latents.shape[0]
  cat = lambda name: jnp.concatenate([p[name] for p in passes], axis=0)
  scales = jnp.concatenate([jnp.full((b,), p["scale"], jnp.float32) for p in passes])
  return cat("ref"), cat("pose"), cat("ref_pose"), cat("text"), scales


def combine(eps: jax.Array, n: int, image_guidance: float, pose_guidance: float) -> jax.Array:
  """(G*B, ...) model outputs of the passes -> the guided (B, ...) prediction, float32."""
  parts = jnp.split(eps.astype(jnp.float32), n, axis=0)
  if n == 1:
    return parts[0]
  if n == 2:
    c, u = parts
    return u + image_guidance * (c - u)
  c, u, r = parts
  return u + pose_guidance * (r - u) + image_guidance * (c - r)
