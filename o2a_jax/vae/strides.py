"""The Wan VAE's compression, the one home of its strides.

Time: 4x and causal (frame 0 is encoded alone), so F = 4k + 1 pixel frames give T = k + 1 latent
frames. Space: 8x in height and width. Latents have 16 channels.
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


def latent_shape(frames: int, height: int, width: int) -> tuple[int, int, int, int]:
  """(T, h, w, 16) of an (F, H, W, 3) clip."""
  return (
    latent_frames(frames),
    height // SPACE_STRIDE,
    width // SPACE_STRIDE,
    LATENT_CHANNELS,
  )
