"""The Wan VAE's compression, the one home of its strides.

Time: 4x and causal (frame 0 is encoded alone), so F = 4k + 1 pixel frames give T = k + 1 latent
frames. Space: 8x in height and width as released (`SPACE_STRIDE`); a narrower VAE built with
fewer stages (the puppet toy's, `VAEConfig.spatial_factor`) compresses less, so the functions
that map pixels to latents take the stride of the VAE at hand. Latents have 16 channels.
"""

from __future__ import annotations

TIME_STRIDE = 4
SPACE_STRIDE = 8
LATENT_CHANNELS = 16


def latent_frames(frames: int) -> int:
  """T of an F-frame clip: (F - 1) // 4 + 1."""
  return (frames - 1) // TIME_STRIDE + 1


def pixel_frames(latents: int) -> int:
  """The F = 4(T - 1) + 1 pixel frames that T latent frames decode to."""
  return TIME_STRIDE * (latents - 1) + 1


def latent_shape(
  frames: int, height: int, width: int, space_stride: int = SPACE_STRIDE
) -> tuple[int, int, int, int]:
  """(T, h, w, 16) of an (F, H, W, 3) clip, for a VAE of `space_stride` (its `spatial_factor`)."""
  return (
    latent_frames(frames),
    height // space_stride,
    width // space_stride,
    LATENT_CHANNELS,
  )
