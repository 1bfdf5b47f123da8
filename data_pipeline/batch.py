"""The training batch: the one interface between the input pipeline and the train step.

Every iterator that feeds `o2a train` yields dicts of numpy arrays with exactly these fields
(per-process batch B; all samples of a batch share F, H and W, one bucket per global batch):

  video        (B,F,H,W,3) float32 in [-1,1]  target clip, F = 4k+1 (images: F = 1)
  pose_video   (B,F,H,W,3) float32 in [-1,1]  rendered driving poses; all -1 when dropped
  ref_image    (B,1,H,W,3) float32            masked reference in [-1,1]; the reference-noise
                                              augmentation (official reference noise augmentation)
                                              may leave [-1,1]
  ref_mask     (B,1,H,W,1) float32 in {0,1}   1 = the region the model must outpaint
  ref_pose     (B,1,H,W,3) float32 in [-1,1]  rendered reference pose
  face_mask    (B,T,H,W)   float32 in {0,1}   face (and hands) loss-weight mask per latent frame,
                                              T = (F-1)//4 + 1, pixel resolution
  ocr_mask     (B,T,H,W)   float32 in {0,1}   0 inside text boxes (excluded from the loss)
  pose_dropped (B,)        bool               the pose video is black (pose scale 0)

The train step VAE-encodes `video`, `ref_image` and `ref_mask` (official reference and mask
encoding) and resizes the masks to the latent grid; everything else about a sample is decided here.
"""

from __future__ import annotations

import numpy as np

from o2a_jax.vae.strides import latent_frames

FIELDS = (
  "video",
  "pose_video",
  "ref_image",
  "ref_mask",
  "ref_pose",
  "face_mask",
  "ocr_mask",
  "pose_dropped",
)


def expected_shapes(batch: int, frames: int, height: int, width: int) -> dict[str, tuple]:
  t = latent_frames(frames)
  return {
    "video": (batch, frames, height, width, 3),
    "pose_video": (batch, frames, height, width, 3),
    "ref_image": (batch, 1, height, width, 3),
    "ref_mask": (batch, 1, height, width, 1),
    "ref_pose": (batch, 1, height, width, 3),
    "face_mask": (batch, t, height, width),
    "ocr_mask": (batch, t, height, width),
    "pose_dropped": (batch,),
  }


def check_batch(batch: dict) -> tuple[int, int, int, int]:
  """Validate a batch against the schema; returns (B, F, H, W). ValueError names the field."""
  missing = [k for k in FIELDS if k not in batch]
  extra = [k for k in batch if k not in FIELDS]
  if missing or extra:
    raise ValueError(f"training batch fields: missing {missing}, unexpected {extra}")
  b, f, h, w, _ = np.shape(batch["video"])
  if (f - 1) % 4:
    raise ValueError(
      f"training clips need 4k+1 frames, got video of shape {np.shape(batch['video'])}"
    )
  if h % 16 or w % 16:
    raise ValueError(f"training frames need H and W divisible by 16, got {h}x{w}")
  for name, shape in expected_shapes(b, f, h, w).items():
    if tuple(np.shape(batch[name])) != shape:
      raise ValueError(f"batch field {name!r} has shape {np.shape(batch[name])}, expected {shape}")
  return b, f, h, w
