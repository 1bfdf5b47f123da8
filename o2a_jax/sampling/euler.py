"""The flow-matching Euler step of the official sampler (official flow-matching scheduler), a pure
function.

Dims: B batch, T latent frames, H/W latent height/width, C channels.
"""

from __future__ import annotations

import jax

from o2a_jax.dims import dims


@dims(x="B T h w C", velocity="B T h w C", returns="B T h w C")
def euler_step(x: jax.Array, velocity: jax.Array, sigma, sigma_next, *, keep: int = 0) -> jax.Array:
  """x (B, T, H, W, C) -> x + (sigma_next - sigma) * velocity; the first `keep` latent frames
  (TokenReplace's clean context) stay as they are."""
  new = x + (sigma_next - sigma) * velocity
  return x.at[:, keep:].set(new[:, keep:]) if keep else new
