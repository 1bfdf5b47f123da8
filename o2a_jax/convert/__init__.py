"""Checkpoint conversion between the official PyTorch layouts (safetensors) and o2a_jax modules.

Public names: `load_official`, `official_shapes`, `official_state_dict`, `save_official`
(the denoiser), `load_vae` (the Wan2.1 VAE) and `load_text_encoder` (UMT5).
"""

from o2a_jax.convert.official import (
  load_official,
  official_shapes,
  official_state_dict,
  save_official,
)
from o2a_jax.convert.text import load_text_encoder
from o2a_jax.convert.vae import load_vae

__all__ = [
  "load_official",
  "load_text_encoder",
  "load_vae",
  "official_shapes",
  "official_state_dict",
  "save_official",
]
