"""Attention kernels for the One-to-All denoiser: a plain-jnp oracle and backend implementations."""

from kernels.attention import IMPLS, attention, hybrid_attention

__all__ = ["IMPLS", "attention", "hybrid_attention"]
