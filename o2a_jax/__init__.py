"""o2a_jax: One-to-All Animation (pose-driven character animation on Wan2.1) in JAX/Flax NNX."""

__version__ = "0.1.0"
