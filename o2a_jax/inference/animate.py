"""Videos of any length from prepared inputs: chunk plan, TokenReplace, stitching (official
TokenReplace at sampling, long-video chunking).

Dims: F pixel frames, H/W height/width, T latent frames, h/w latent height/width.

Each chunk is one `o2a_jax.sampling.chunk.generate_chunk` call (one jitted denoising loop); a chunk
that starts after frame 0 gets the 5 frames already generated at its start as TokenReplace context
(re-encoded through the VAE inside `generate_chunk`). As officially, every chunk starts from the
same seeded noise (official flow-matching scheduler). Chunks of equal length share one compiled
program.
"""

from __future__ import annotations

import jax
import numpy as np
from tqdm import tqdm

from o2a_jax.inference.chunks import OVERLAP_FRAMES, Chunk, check_plan, place, plan_chunks
from o2a_jax.inference.prepare import Prepared, to_model_range
from o2a_jax.io.video import to_uint8
from o2a_jax.sampling.chunk import generate_chunk
from o2a_jax.vae.strides import SPACE_STRIDE, latent_shape


def chunk_noise(
  seed: int, frames: int, height: int, width: int, space_stride: int = SPACE_STRIDE
) -> np.ndarray:
  """The initial latents (T, h, w, 16) float32 of a chunk of `frames` frames (a VAE of
  `space_stride`)."""
  shape = latent_shape(frames, height, width, space_stride)
  return np.asarray(jax.random.normal(jax.random.key(seed), shape))


def chunk_poses(poses: np.ndarray, chunk: Chunk) -> np.ndarray:
  """Pose frames [start, end) of a chunk; past the last frame the last pose repeats."""
  idx = np.minimum(np.arange(chunk.start, chunk.end), len(poses) - 1)
  return poses[idx]


def generate_video(
  model,
  vae,
  inputs: Prepared,
  text_embeds: np.ndarray,
  negative_text_embeds: np.ndarray,
  *,
  steps: int = 30,
  shift: float = 7.0,
  image_guidance: float = 2.5,
  pose_guidance: float = 1.5,
  pose_scale: float = 1.0,
  seed: int = 42,
  reproduce_official: bool = False,
  chunks: list[Chunk] | None = None,
  progress: bool = True,
) -> np.ndarray:
  """Animates the prepared reference along all its driving poses; uint8 (F, H, W, 3).

  `reproduce_official` uses the official chunk plan and stitching (needs N >= 81, see
  `o2a_jax.inference.chunks`); `chunks` gives another plan (e.g. `chunks.fixed_chunks`).
  """
  poses = np.asarray(inputs.poses)
  n, hh, ww = poses.shape[:3]
  if chunks is None:
    chunks = plan_chunks(n, reproduce_official=reproduce_official)
  check_plan(chunks, n)
  ref_pose = to_model_range(inputs.ref_pose)[None]
  video = np.zeros((n, hh, ww, 3), np.uint8)
  total_steps = steps * len(chunks)
  with tqdm(total=total_steps, desc="denoising", unit="step", disable=not progress) as bar:
    done = [0]

    def on_step(_):
      bar.update(1)
      done[0] += 1
      if done[0] % steps == 0:  # the chunk's last step: its latents are being decoded now
        bar.set_postfix_str("decoding")

    for i, c in enumerate(chunks):
      bar.set_description(f"denoising chunk {i + 1}/{len(chunks)} ({c.frames} frames)")
      prev = video[c.start : c.start + OVERLAP_FRAMES].copy() if c.context else None
      out = generate_chunk(
        model,
        vae,
        inputs.image,
        inputs.mask,
        to_model_range(chunk_poses(poses, c)),
        ref_pose,
        text_embeds,
        negative_text_embeds,
        chunk_noise(seed, c.frames, hh, ww, vae.cfg.spatial_factor),
        steps=steps,
        shift=shift,
        image_guidance=image_guidance,
        pose_guidance=pose_guidance,
        pose_scale=pose_scale,
        prev_frames=prev,
        on_step=on_step,
      )
      place(video, c, to_uint8(out))
      bar.set_postfix_str("")
  return video
