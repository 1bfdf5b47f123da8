"""The One-to-All denoiser (official `WanTransformer3DModel` with its pose branch and extractor).

Dims: B batch, T latent frames, H/W height/width, C channels, L tokens, S context tokens,
D width, P pose blocks, M extractor blocks.

Forward (official denoiser forward pass): the 32-channel reference latents become a prefix latent
frame (`image_to_cond`) in front of the noisy latents; the sequence is patch-embedded with 3-D RoPE
(the prefix has frame index 0). Main blocks run self-attention + HRFA over reference-extractor
features (block i reads feature i // ceil(L / (M + 1))), text cross-attention and the FFN. Pose
tokens (reference pose as the prefix frame, then the driving poses) are added to the output of main
block 0 and run through the pose blocks, whose zero-projected outputs are added after main blocks
1..P, scaled by `pose_scale`. TokenReplace gives the two latent frames after the prefix the t = 0
modulation. The output head predicts the flow-matching velocity and the prefix frame is dropped.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax import sharding
from o2a_jax.dims import dims
from o2a_jax.layers.block import ACT, Block, TokenReplace
from o2a_jax.layers.conv_encoders import PoseEncoder, PrefixEncoder
from o2a_jax.layers.embeddings import (
  PatchEmbed,
  TextProjection,
  TimeEmbedding,
  rope_tables,
  unpatchify,
)
from o2a_jax.layers.linear import dense
from o2a_jax.layers.norms import layer_norm_f32, param
from o2a_jax.model import stack
from o2a_jax.model.config import DenoiserConfig
from o2a_jax.model.extractor import ReferenceExtractor
from o2a_jax.vae.strides import latent_frames, pixel_frames

TOKEN_REPLACE_FRAMES = 2  # latent frames after the prefix that TokenReplace keeps clean


class Denoiser(nnx.Module):
  """velocity = model(latents, timestep, text_embeds, ref_latents, pose_video, ref_pose)."""

  def __init__(self, cfg: DenoiserConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    dt, pdt = cfg.compute_dtype, cfg.params_dtype
    d, p = cfg.dim, cfg.patch_size[1]
    kw = dict(dtype=dt, param_dtype=pdt, rngs=rngs)
    self.patch_embedding = PatchEmbed(cfg.in_channels, d, p, **kw)
    self.time_embedder = TimeEmbedding(cfg.freq_dim, d, **kw)
    self.text_embedder = TextProjection(cfg.text_dim, d, **kw)
    if cfg.prefix_frame:
      self.image_to_cond = PrefixEncoder(
        cfg.ref_in_channels,
        cfg.cond_channels,
        cfg.cond_blocks,
        cfg.cond_groups,
        cfg.in_channels,
        **kw,
      )
    if cfg.pose_branch:
      self.pose_encoder = PoseEncoder(
        d, cfg.hint_channels, cfg.hint_groups, cfg.hint_time_down, **kw
      )
    self.refextractor = ReferenceExtractor(cfg, rngs=rngs)
    block = dict(eps=cfg.eps, dtype=dt, param_dtype=pdt, attn_impl=cfg.attn_impl)
    self.blocks = stack.create(
      cfg.num_layers,
      lambda r: Block(
        d, cfg.num_heads, cfg.ffn_dim, cross_attn=True, ref_attn=True, rngs=r, **block
      ),
      rngs,
    )
    if cfg.pose_layers:
      self.pose_blocks = stack.create(
        cfg.pose_layers,
        lambda r: Block(
          d, cfg.num_heads, cfg.ffn_dim, cross_attn=False, ref_attn=False, rngs=r, **block
        ),
        rngs,
      )
      self.pose_zero = stack.create(
        cfg.pose_layers,
        lambda r: dense(d, d, ("embed", None), zero=True, rngs=r, dtype=dt, param_dtype=pdt),
        rngs,
      )
    init = lambda key, shape, dt_: (jax.random.normal(key, shape, dt_) / d**0.5).astype(dt_)
    self.scale_shift_table = param((1, 2, d), init, (None, None, "embed"), pdt, rngs)
    self.proj_out = dense(d, cfg.out_channels * p * p, ("embed", None), **kw)

  def _check_inputs(self, latents, timestep, text_embeds, ref_latents, pose_video, ref_pose):
    cfg = self.cfg

    def fail(name, arr, want):
      raise ValueError(f"{name} has shape {tuple(arr.shape)}; expected {want}")

    if latents.ndim != 5 or latents.shape[-1] != cfg.in_channels:
      fail("latents", latents, f"(B, T, h, w, {cfg.in_channels})")
    b, t, h, w, _ = latents.shape
    p = cfg.patch_size[1]
    if h % p or w % p:
      fail("latents", latents, f"h and w divisible by the patch size {p}")
    if timestep.shape != (b,):
      fail("timestep", timestep, f"({b},)")
    if text_embeds.ndim != 3 or text_embeds.shape[0] != b or text_embeds.shape[2] != cfg.text_dim:
      fail("text_embeds", text_embeds, f"({b}, S, {cfg.text_dim})")
    if ref_latents.shape != (b, 1, h, w, cfg.ref_in_channels):
      fail("ref_latents", ref_latents, f"({b}, 1, {h}, {w}, {cfg.ref_in_channels})")
    if not cfg.pose_branch:
      if pose_video is not None or ref_pose is not None:
        raise ValueError(
          "this model has no pose branch (stage-1 variant); pass pose_video=None, ref_pose=None"
        )
      return
    scale = cfg.spatial_down // p  # pixels per latent pixel implied by the pose encoder
    hp, wp = h * scale, w * scale
    frames = pose_video.shape[1] if pose_video.ndim == 5 else -1
    if pose_video.ndim != 5 or pose_video.shape[0] != b or pose_video.shape[2:] != (hp, wp, 3):
      fail("pose_video", pose_video, f"({b}, F, {hp}, {wp}, 3)")
    if latent_frames(frames) != t or frames < 1:
      fail("pose_video", pose_video, f"F = {pixel_frames(t)} frames for T = {t} latent frames")
    if ref_pose.shape != (b, 1, hp, wp, 3):
      fail("ref_pose", ref_pose, f"({b}, 1, {hp}, {wp}, 3)")

  @dims(
    latents="B T h w C",
    timestep="B",
    text_embeds="B S _",
    ref_latents="B 1 h w _",
    pose_video="B F H W 3",
    ref_pose="B 1 H W 3",
    returns="B T h w _",
  )
  def __call__(
    self,
    latents: jax.Array,
    timestep: jax.Array,
    text_embeds: jax.Array,
    ref_latents: jax.Array,
    pose_video: jax.Array | None,
    ref_pose: jax.Array | None,
    *,
    pose_scale: float | jax.Array = 1.0,
    token_replace: bool | jax.Array = False,
    return_activations: bool = False,
  ):
    """Predicts the flow-matching velocity (B, T, h, w, C_out).

    Args:
      latents: noisy normalised latents (B, T, h, w, 16).
      timestep: (B,) floats in [0, 1000].
      text_embeds: (B, S, text_dim) text-encoder embeddings.
      ref_latents: (B, 1, h, w, 32) = [reference latent | mask latent], normalised.
      pose_video: (B, F, 8h, 8w, 3) rendered driving poses in [-1, 1], F = 4T - 3; None
        for a model without pose branch (stage 1).
      ref_pose: (B, 1, 8h, 8w, 3) the rendered reference pose in [-1, 1]; None likewise.
      pose_scale: the official `conditioning_scale`: a scalar or one value per sample (B,).
      token_replace: give the 2 latent frames after the prefix the t = 0 modulation: a Python
        bool for the whole batch, or a (B,) bool array choosing per sample (training draws it
        per sample; a sample without it gets its own t in place of t = 0, i.e. no change).
      return_activations: also return a dict of intermediate activations (for parity tests).
    """
    cfg = self.cfg
    self._check_inputs(latents, timestep, text_embeds, ref_latents, pose_video, ref_pose)
    acts = {}
    hs, grid = self._embed(latents, ref_latents, acts)
    ropes = self._ropes(grid)
    timestep = timestep.astype(jnp.float32)
    temb, tproj = self.time_embedder(timestep)
    tr = self._token_replace(token_replace, timestep, grid)
    text = self.text_embedder(text_embeds.astype(cfg.compute_dtype))
    ref_feats = self.refextractor(ref_latents, timestep, ropes["k_ref_rope"])  # R B S D
    acts["refextractor"] = ref_feats
    pose_tok = self._pose_tokens(pose_video, ref_pose, acts) if cfg.pose_branch else None
    hs = self._blocks(
      hs, tproj, ref_feats, pose_tok, pose_scale, dict(text=text, tr=tr, **ropes), acts,
      return_activations,
    )  # fmt: skip
    out = self._head(hs, temb, tr, grid)
    return (out, acts) if return_activations else out

  def _embed(self, latents, ref_latents, acts) -> tuple[jax.Array, tuple[int, int, int]]:
    """Latents (with the reference prefix frame in front) -> tokens (B, L, D) and their grid."""
    cfg, dt = self.cfg, self.cfg.compute_dtype
    b, t, h, w, _ = latents.shape
    p = cfg.patch_size[1]
    x = latents.astype(dt)
    if cfg.prefix_frame:
      prefix = self.image_to_cond(ref_latents)  # B 1 h w C
      x = jnp.concatenate([prefix.astype(dt), x], axis=1)
      acts["image_to_cond"] = prefix
    tok = self.patch_embedding(x)  # B T+1 H W D
    acts["patch_embedding"] = tok
    return sharding.constrain(tok.reshape(b, -1, cfg.dim), ACT), (
      t + int(cfg.prefix_frame),
      h // p,
      w // p,
    )

  def _ropes(self, grid) -> dict:
    """The RoPE tables: the video's, and HRFA's with frame index 0 for queries and references."""
    cfg = self.cfg
    kw = dict(theta=cfg.rope_theta, max_len=cfg.rope_max_seq_len)
    return dict(
      rope=rope_tables(grid, cfg.head_dim, **kw),
      q_ref_rope=rope_tables(grid, cfg.head_dim, zero_time=True, **kw),
      k_ref_rope=rope_tables((1,) + tuple(grid[1:]), cfg.head_dim, zero_time=True, **kw),
    )

  def _token_replace(self, token_replace, timestep, grid) -> TokenReplace | None:
    """The t = 0 modulation of the latent frames TokenReplace keeps clean, or None."""
    per_sample = not isinstance(token_replace, (bool, np.bool_))
    if not (per_sample or token_replace):
      return None
    b, t = timestep.shape[0], grid[0] - int(self.cfg.prefix_frame)
    if t < TOKEN_REPLACE_FRAMES:
      raise ValueError(f"TokenReplace needs at least {TOKEN_REPLACE_FRAMES} latent frames, got {t}")
    if per_sample:
      token_replace = jnp.asarray(token_replace)
      if token_replace.shape != (b,):
        raise ValueError(f"token_replace has shape {token_replace.shape}; expected ({b},)")
      tr_t = jnp.where(token_replace, 0.0, timestep)
    else:
      tr_t = jnp.zeros_like(timestep)
    temb, tproj = self.time_embedder(tr_t)
    n_frame, first = grid[1] * grid[2], int(self.cfg.prefix_frame)
    idx = jnp.arange(grid[0] * n_frame)
    mask = (idx >= first * n_frame) & (idx < (first + TOKEN_REPLACE_FRAMES) * n_frame)
    return TokenReplace(tproj=tproj, temb=temb, mask=mask)

  def _pose_tokens(self, pose_video, ref_pose, acts) -> jax.Array:
    """Pose tokens (B, L, D): the reference pose's frame, then the driving poses'."""
    pose_ref = self.pose_encoder(ref_pose)  # B 1 H W D
    pose_drv = self.pose_encoder(pose_video)  # B T H W D
    acts.update({"pose_ref": pose_ref, "pose_video": pose_drv})
    b = pose_ref.shape[0]
    return jnp.concatenate([pose_ref, pose_drv], axis=1).reshape(b, -1, self.cfg.dim)

  def _blocks(self, hs, tproj, ref_feats, pose_tok, pose_scale, blk_kw, acts, return_activations):
    """Main block 0; then blocks 1..P, each followed by its pose block; then the rest."""
    cfg, dt = self.cfg, self.cfg.compute_dtype
    scale = jnp.asarray(pose_scale, dt)
    if scale.ndim == 1:
      scale = scale[:, None, None]
    interval = cfg.ref_interval
    run = dict(scan=cfg.scan_layers, remat=cfg.remat)

    def main(block, hs, index):
      ref = jax.lax.dynamic_index_in_dim(ref_feats, index // interval, keepdims=False)
      return block(hs, tproj, ref=ref, **blk_kw)

    def main_body(block, carry, index, x):
      out = main(block, carry, index)
      return out, (out if return_activations else None)

    hs, ys0 = stack.run(self.blocks, main_body, hs, 0, 1, **run)
    n_pose = cfg.pose_layers
    ys_pose = None
    if n_pose:
      pose_graph, pose_state = nnx.split(self.pose_blocks)
      zero_graph, zero_state = nnx.split(self.pose_zero)

      def pose_body(block, carry, index, x):
        hs, ctrl = carry
        pose_params, zero_params = x
        out = main(block, hs, index)
        ctrl = nnx.merge(pose_graph, pose_params)(ctrl, tproj, rope=blk_kw["rope"], tr=blk_kw["tr"])
        res = nnx.merge(zero_graph, zero_params)(ctrl)
        hs = out + (res * scale).astype(dt)
        ys = (out, ctrl) if return_activations else None
        return (hs, ctrl), ys

      ctrl0 = hs + pose_tok.astype(dt)
      (hs, _), ys_pose = stack.run(
        self.blocks, pose_body, (hs, ctrl0), 1, 1 + n_pose, xs=(pose_state, zero_state), **run
      )
    hs, ys_rest = stack.run(self.blocks, main_body, hs, 1 + n_pose, cfg.num_layers, **run)
    if return_activations:
      mains = [ys0] + ([ys_pose[0]] if n_pose else []) + ([ys_rest] if ys_rest is not None else [])
      acts["blocks"] = jnp.concatenate(mains, axis=0)
      if n_pose:
        acts["pose_blocks"] = ys_pose[1]
    return hs

  def _head(self, hs, temb, tr: TokenReplace | None, grid) -> jax.Array:
    """Output head: modulation from temb (not tproj), as the official code; prefix dropped."""
    cfg = self.cfg
    table = self.scale_shift_table[...]
    head = (table + temb[:, None].astype(table.dtype)).astype(jnp.float32)  # B 2 D
    shift, scale = head[:, :1], head[:, 1:]
    if tr is not None:
      tr_head = (table + tr.temb[:, None].astype(table.dtype)).astype(jnp.float32)
      m = tr.mask[None, :, None]
      shift = jnp.where(m, tr_head[:, :1], shift)
      scale = jnp.where(m, tr_head[:, 1:], scale)
    y = self.proj_out((layer_norm_f32(hs, cfg.eps) * (1 + scale) + shift).astype(cfg.compute_dtype))
    return unpatchify(y, grid, cfg.patch_size[1], cfg.out_channels)[:, int(cfg.prefix_frame) :]


def build_denoiser(cfg: DenoiserConfig, *, seed: int = 0) -> Denoiser:
  """A randomly initialised denoiser; annotated parameters are sharded if a mesh is current."""
  eager = not jax.sharding.get_abstract_mesh().empty
  with nnx.use_eager_sharding(eager), sharding.axis_rules():
    return Denoiser(cfg, rngs=nnx.Rngs(seed))
