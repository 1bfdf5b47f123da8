"""Building blocks of the denoiser: norms, embeddings, attention, blocks and conv encoders."""
