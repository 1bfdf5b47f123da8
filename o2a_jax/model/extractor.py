"""The reference extractor (official `refextractor`, official reference extractor).

Dims: R extractor outputs (blocks + 1), B batch, S reference tokens, D width, E the main
model's width.

The 32-channel reference latents are patch-embedded, run through M text-free Wan blocks
modulated by the extractor's own embedding of the diffusion timestep, with 2-D RoPE (frame
index 0), and the M + 1 token sequences (before block 0, after each block) each pass through
a zero-initialised projection: the features the main blocks' HRFA branches attend to.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from o2a_jax.layers.block import Block
from o2a_jax.layers.embeddings import PatchEmbed, TimeEmbedding
from o2a_jax.layers.norms import param
from o2a_jax.model import stack


class ReferenceExtractor(nnx.Module):
  """Reference latents (B, 1, H, W, C) and t (B,) -> features (M + 1, B, S, D)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    dt, pdt = cfg.compute_dtype, cfg.params_dtype
    kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
    self.cfg = cfg
    self.patch_embedding = PatchEmbed(cfg.ref_in_channels, cfg.dim, cfg.patch_size[1], **kw)
    self.time_embedder = TimeEmbedding(cfg.freq_dim, cfg.dim, **kw)
    if cfg.ref_layers:
      self.blocks = stack.create(
        cfg.ref_layers,
        lambda r: Block(
          cfg.dim,
          cfg.num_heads,
          cfg.ffn_dim,
          cross_attn=False,
          ref_attn=False,
          eps=cfg.eps,
          dtype=dt,
          param_dtype=pdt,
          attn_impl=cfg.attn_impl,
          rngs=r,
        ),
        rngs,
      )
    # M + 1 zero-initialised Linear(D, D) stored stacked: kernel (M + 1, D, D), bias (M + 1, D).
    n = cfg.ref_layers + 1
    self.ref_kernel = param(
      (n, cfg.dim, cfg.dim), nnx.initializers.zeros, ("layers", "embed", None), pdt
    )
    self.ref_bias = param((n, cfg.dim), nnx.initializers.zeros, ("layers", None), pdt)

  def __call__(self, ref_latents: jax.Array, timestep: jax.Array, rope) -> jax.Array:
    cfg, dt = self.cfg, self.cfg.compute_dtype
    tok = self.patch_embedding(ref_latents)  # B 1 H W D
    b = tok.shape[0]
    h = tok.reshape(b, -1, cfg.dim)  # B S D
    _, tproj = self.time_embedder(timestep)
    samples = [h[None]]
    if cfg.ref_layers:

      def body(block, carry, index, x):
        out = block(carry, tproj, rope=rope)
        return out, out

      _, ys = stack.run(
        self.blocks, body, h, 0, cfg.ref_layers, scan=cfg.scan_layers, remat=cfg.remat
      )
      samples.append(ys)
    feats = jnp.concatenate(samples, axis=0)  # R B S D
    out = jnp.einsum("RBSD,RDE->RBSE", feats, self.ref_kernel[...].astype(dt))
    return out + self.ref_bias[...].astype(dt)[:, None, None, :]
