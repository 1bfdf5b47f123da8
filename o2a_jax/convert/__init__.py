"""Checkpoint conversion between the official PyTorch layouts (safetensors) and o2a_jax modules."""
