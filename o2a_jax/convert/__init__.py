"""Checkpoint conversion between the official PyTorch layouts (safetensors) and o2a_jax modules."""

from o2a_jax.convert.official import (  # noqa: E402, F401
  load_official,
  official_shapes,
  official_state_dict,
  save_official,
)
from o2a_jax.convert.vae import load_vae  # noqa: F401
from o2a_jax.convert.text import load_text_encoder  # noqa: F401
