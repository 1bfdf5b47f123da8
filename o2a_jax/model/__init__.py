"""The One-to-All denoiser: config dataclass and the top-level module."""

from o2a_jax.model.config import PRESETS, DenoiserConfig, preset
from o2a_jax.model.denoiser import Denoiser, build_denoiser

__all__ = ["PRESETS", "Denoiser", "DenoiserConfig", "build_denoiser", "preset"]
