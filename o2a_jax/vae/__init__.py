"""The Wan2.1 causal video VAE in Flax NNX (channels-last) and the Wan latent normalisation.

`vae = o2a_jax.convert.load_vae(path)`; `vae.encode(video)` -> posterior mean;
`vae.decode(latents)`; `normalize(mean)` / `denormalize(latents)` apply the Wan per-channel mean/std
(official VAE compression and latent normalisation)."""

from o2a_jax.vae.model import (
  LATENTS_MEAN,
  LATENTS_STD,
  VAEConfig,
  WanVAE,
  denormalize,
  normalize,
)

__all__ = ["LATENTS_MEAN", "LATENTS_STD", "VAEConfig", "WanVAE", "denormalize", "normalize"]
