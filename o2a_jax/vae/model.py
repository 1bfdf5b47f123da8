"""The Wan2.1 causal video VAE (diffusers `AutoencoderKLWan`) in Flax NNX, channels-last.

Temporal causality follows the reference: the encoder sees the first frame alone, then chunks of 4
frames, and the decoder one latent frame at a time, each layer carrying a cache of its last input
frames. Here the chunk loops are `lax.scan`s inside one jitted program with the caches as carry, so
the compiled program and its compile time do not grow with the frame count.

Memory is bounded by spatial tiling, switched on when the latent grid is larger than the tile size.
Each network is split where its only global operation sits: the mid-block attention works on a whole
frame at latent resolution, which is cheap, so it always runs untiled; only the convolutional
high-resolution part (the encoder's input stages, the decoder's up blocks) runs per tile. The tiles
overlap and are blended at the seams (`tiling.py`), which leaves only the convolutions' finite
receptive field as a source of seam error."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.dims import dims
from o2a_jax.vae.layers import CausalConv3d, MidBlock, Resample, ResidualBlock, RMSNorm
from o2a_jax.vae.tiling import AxisPlan, plan_axis

# Official VAE compression and latent normalisation: per-channel statistics of the Wan2.1 latents
# (posterior mean).
LATENTS_MEAN = (
  -0.7571,
  -0.7089,
  -0.9113,
  0.1075,
  -0.1745,
  0.9653,
  -0.1517,
  1.5508,
  0.4134,
  -0.0715,
  0.5517,
  -0.3632,
  -0.1922,
  -0.9497,
  0.2503,
  -0.2921,
)
LATENTS_STD = (
  2.8184,
  1.4541,
  2.3275,
  2.6558,
  1.2196,
  1.7708,
  2.6052,
  2.0743,
  3.2687,
  2.1526,
  2.8652,
  1.5579,
  1.6382,
  1.1253,
  2.8251,
  1.9160,
)


def _stats(latents_mean, latents_std, z: int) -> tuple[jax.Array, jax.Array]:
  mu = jnp.asarray(latents_mean, jnp.float32)
  sigma = jnp.asarray(latents_std, jnp.float32)
  if mu.shape != (z,) or sigma.shape != (z,):
    raise ValueError(
      f"latents_mean/latents_std must have one entry per latent channel ({z}), got shapes "
      f"{mu.shape} and {sigma.shape}"
    )
  return mu, sigma


def normalize(mean: jax.Array, *, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD) -> jax.Array:
  """Posterior mean (..., 16) -> the normalised latents the denoiser sees: (mean - mu) / sigma.

  `latents_mean`/`latents_std`: per-channel statistics; the Wan2.1 constants by default, a trained
  VAE's own ones otherwise (its config.json `latents_mean`/`latents_std`,
  `o2a_jax.convert.vae.read_latent_stats`).
  """
  mu, sigma = _stats(latents_mean, latents_std, mean.shape[-1])
  return ((mean.astype(jnp.float32) - mu) / sigma).astype(mean.dtype)


def denormalize(
  latents: jax.Array, *, latents_mean=LATENTS_MEAN, latents_std=LATENTS_STD
) -> jax.Array:
  """Normalised latents (..., 16) -> VAE latents: z * sigma + mu (statistics as `normalize`)."""
  mu, sigma = _stats(latents_mean, latents_std, latents.shape[-1])
  return (latents.astype(jnp.float32) * sigma + mu).astype(latents.dtype)


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Architecture (diffusers constructor arguments; defaults = the shipped Wan2.1 VAE) and tiling.

  Tiling sizes are in latent pixels (8 output pixels each): a frame whose latent grid exceeds
  `*_tile` in height or width is processed in tiles of that size whose neighbours share at least
  `*_overlap` pixels.
  """

  base_dim: int = 96
  z_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  temperal_downsample: tuple[bool, ...] = (False, True, True)
  # Defaults: 480x832 runs as 2 tiles, 720x1280 as 2 (90x96 latent) tiles. With overlap 24 the
  # seams are exact to ~1e-6 relative (measured, real architecture with random weights: overlap 16
  # gives 1.4e-4, 20 gives 1.3e-5, 24 gives 7e-7).
  encode_tile: int = 96
  encode_overlap: int = 24
  decode_tile: int = 96
  decode_overlap: int = 24
  # Encode/decode pad the chunks after the first frame up to a multiple of this and run only the
  # valid ones in a while loop, so one compiled program serves every frame count in a bucket
  # (1-20 chunks = 5-81 frames with the default); images (no chunks) compile separately.
  # 0 compiles each length exactly.
  chunk_bucket: int = 20
  # The per-channel latent statistics `normalize` / `denormalize` use (the folder's config.json
  # `latents_mean` / `latents_std`); None: the Wan2.1 constants.
  latents_mean: tuple[float, ...] | None = None
  latents_std: tuple[float, ...] | None = None

  def __post_init__(self):
    if (self.latents_mean is None) != (self.latents_std is None):
      raise ValueError("give both latents_mean and latents_std, or neither")
    for name in ("latents_mean", "latents_std"):
      v = getattr(self, name)
      if v is not None:
        v = tuple(float(x) for x in v)
        if len(v) != self.z_dim:
          raise ValueError(
            f"{name} needs one value per latent channel ({self.z_dim}), got {len(v)}"
          )
        object.__setattr__(self, name, v)
    if len(self.temperal_downsample) != len(self.dim_mult) - 1:
      raise ValueError(
        f"temperal_downsample {self.temperal_downsample} needs len(dim_mult) - 1 = "
        f"{len(self.dim_mult) - 1} entries"
      )
    for name in ("encode", "decode"):
      plan_axis(10**6, getattr(self, f"{name}_tile"), getattr(self, f"{name}_overlap"))

  @property
  def latent_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per latent channel: this VAE's own, else the Wan2.1 constants."""
    if self.latents_mean is None:
      return LATENTS_MEAN, LATENTS_STD
    return self.latents_mean, self.latents_std

  @property
  def spatial_factor(self) -> int:
    return 2 ** (len(self.dim_mult) - 1)

  @property
  def temporal_factor(self) -> int:
    return 2 ** sum(bool(t) for t in self.temperal_downsample)


class Encoder(nnx.Module):
  """`WanEncoder3d`: stage A = conv_in + down blocks (tiled), stage B = mid block + head."""

  def __init__(self, cfg: VAEConfig, *, dtype, precision=None):
    kw = dict(dtype=dtype, precision=precision)
    dims = [cfg.base_dim * u for u in (1, *cfg.dim_mult)]
    self.conv_in = CausalConv3d(3, dims[0], (3, 3, 3), **kw)
    blocks = []
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
      for _ in range(cfg.num_res_blocks):
        blocks.append(ResidualBlock(c_in, c_out, **kw))
        c_in = c_out
      if i != len(cfg.dim_mult) - 1:
        mode = "downsample3d" if cfg.temperal_downsample[i] else "downsample2d"
        blocks.append(Resample(c_out, mode, **kw))
    self.down_blocks = nnx.List(blocks)
    self.mid_block = MidBlock(dims[-1], **kw)
    self.norm_out = RMSNorm(dims[-1], dtype=dtype)
    self.conv_out = CausalConv3d(dims[-1], 2 * cfg.z_dim, (3, 3, 3), **kw)
    self.out_dim = dims[-1]

  def stage_a(self, x, cache, first: bool):
    caches = cache if cache is not None else (None,) * (1 + len(self.down_blocks))
    x, c = self.conv_in(x, caches[0])
    new = [c]
    for block, c in zip(self.down_blocks, caches[1:]):
      if isinstance(block, Resample):
        x, c = block(x, c, first)
      else:
        x, c = block(x, c)
      new.append(c)
    return x, tuple(new)

  def stage_b(self, x, cache):
    c_mid, c_out = cache if cache is not None else (None, None)
    x, c_mid = self.mid_block(x, c_mid)
    x, c_out = self.conv_out(jax.nn.silu(self.norm_out(x)), c_out)
    return x, (c_mid, c_out)


class UpBlock(nnx.Module):
  """`WanUpBlock`: num_res_blocks + 1 residual blocks, then an optional upsampler."""

  def __init__(self, c_in, c_out, num_res_blocks, mode, *, dtype, precision=None):
    kw = dict(dtype=dtype, precision=precision)
    self.resnets = nnx.List(
      [ResidualBlock(c_in if j == 0 else c_out, c_out, **kw) for j in range(num_res_blocks + 1)]
    )
    self.upsampler = Resample(c_out, mode, **kw) if mode is not None else None

  def __call__(self, x, cache, first: bool):
    caches = cache if cache is not None else (None,) * (len(self.resnets) + 1)
    new = []
    for block, c in zip(self.resnets, caches):
      x, c = block(x, c)
      new.append(c)
    c = caches[-1]
    if self.upsampler is not None:
      x, c = self.upsampler(x, c, first)
    new.append(c)
    return x, tuple(new)


class Decoder(nnx.Module):
  """`WanDecoder3d`: stage A = conv_in + mid block, stage B = up blocks + head (tiled)."""

  def __init__(self, cfg: VAEConfig, *, dtype, precision=None):
    kw = dict(dtype=dtype, precision=precision)
    mult = cfg.dim_mult
    dims = [cfg.base_dim * u for u in (mult[-1], *mult[::-1])]
    upsample = tuple(cfg.temperal_downsample[::-1])
    self.conv_in = CausalConv3d(cfg.z_dim, dims[0], (3, 3, 3), **kw)
    self.mid_block = MidBlock(dims[0], **kw)
    blocks = []
    for i, (c_in, c_out) in enumerate(zip(dims[:-1], dims[1:])):
      if i > 0:
        c_in //= 2  # the previous upsampler halves the channels
      mode = None
      if i != len(mult) - 1:
        mode = "upsample3d" if upsample[i] else "upsample2d"
      blocks.append(UpBlock(c_in, c_out, cfg.num_res_blocks, mode, **kw))
    self.up_blocks = nnx.List(blocks)
    self.norm_out = RMSNorm(dims[-1], dtype=dtype)
    self.conv_out = CausalConv3d(dims[-1], 3, (3, 3, 3), **kw)
    self.mid_dim = dims[0]

  def stage_a(self, x, cache):
    c_in, c_mid = cache if cache is not None else (None, None)
    x, c_in = self.conv_in(x, c_in)
    x, c_mid = self.mid_block(x, c_mid)
    return x, (c_in, c_mid)

  def stage_b(self, x, cache, first: bool):
    caches = cache if cache is not None else (None,) * (len(self.up_blocks) + 1)
    new = []
    for block, c in zip(self.up_blocks, caches):
      x, c = block(x, c, first)
      new.append(c)
    x, c = self.conv_out(jax.nn.silu(self.norm_out(x)), caches[-1])
    new.append(c)
    return x, tuple(new)


def _causal_scan(step_first, step, x, chunk: int, n_valid=None):
  """Runs `step_first` on frame 0 and `step` on each following `chunk` frames, the cache as carry.

  x (B,T,...) with T = 1 + n*chunk; each step returns (y (B,t,...), cache); outputs are concatenated
  in time. With `n_valid` (a traced int) only the first `n_valid` chunks are run, in a while loop
  over a padded buffer, so one compiled program serves every frame count up to the padded one;
  output frames past the valid ones are zero. Without it, a `lax.scan` over all chunks (reverse-mode
  differentiable, for training).
  """
  y0, cache = step_first(x[:, :1])
  n = (x.shape[1] - 1) // chunk
  if n == 0:
    return y0
  if n_valid is None:
    rest = x[:, 1:].reshape(x.shape[0], n, chunk, *x.shape[2:]).swapaxes(0, 1)

    def body(cache, xc):
      y, cache = step(xc, cache)
      return cache, y

    _, ys = jax.lax.scan(body, cache, rest)  # (n,B,t,...)
    ys = ys.swapaxes(0, 1)
    ys = ys.reshape(ys.shape[0], -1, *ys.shape[3:])
    return jnp.concatenate([y0, ys], axis=1)

  y_spec = jax.eval_shape(lambda xc, c: step(xc, c)[0], x[:, 1 : 1 + chunk], cache)
  t0, t = y0.shape[1], y_spec.shape[1]
  out = jnp.zeros((y0.shape[0], t0 + n * t, *y_spec.shape[2:]), y_spec.dtype)
  out = jax.lax.dynamic_update_slice_in_dim(out, y0.astype(out.dtype), 0, axis=1)

  def loop(i, carry):
    out, cache = carry
    xc = jax.lax.dynamic_slice_in_dim(x, 1 + i * chunk, chunk, axis=1)
    y, cache = step(xc, cache)
    out = jax.lax.dynamic_update_slice_in_dim(out, y.astype(out.dtype), t0 + i * t, axis=1)
    return out, cache

  out, _ = jax.lax.fori_loop(0, n_valid, loop, (out, cache))
  return out


def _tiled(fn, x, plans: tuple[AxisPlan, AxisPlan], in_scale: int, out_scale: int, out_tail):
  """Blends fn(tile) over the tile grid.

  x (B,T,H,W,C) has `in_scale` pixels per latent pixel; fn maps a tile to
  (B,T',h*out_scale,w*out_scale,C'); `out_tail` = (T', C').
  """
  py, px = plans
  if len(py.origins) == 1 and len(px.origins) == 1:
    return fn(x)
  wy, wx = py.weights(out_scale), px.weights(out_scale)
  grid = [(i, j) for i in range(len(py.origins)) for j in range(len(px.origins))]
  oy = np.array([py.origins[i] for i, _ in grid], np.int32)
  ox = np.array([px.origins[j] for _, j in grid], np.int32)
  wys = jnp.asarray(np.stack([wy[i] for i, _ in grid]))
  wxs = jnp.asarray(np.stack([wx[j] for _, j in grid]))
  b = x.shape[0]
  t_out, c_out = out_tail
  hy, hx = py.size, px.size
  n_h = (py.origins[-1] + hy) * out_scale
  n_w = (px.origins[-1] + hx) * out_scale
  acc = jnp.zeros((b, t_out, n_h, n_w, c_out), jnp.float32)

  def body(acc, xs):
    y0, x0, wyi, wxi = xs
    tile = jax.lax.dynamic_slice(
      x,
      (0, 0, y0 * in_scale, x0 * in_scale, 0),
      (b, x.shape[1], hy * in_scale, hx * in_scale, x.shape[4]),
    )
    out = fn(tile).astype(jnp.float32) * (wyi[:, None] * wxi[None, :])[None, None, :, :, None]
    start = (0, 0, y0 * out_scale, x0 * out_scale, 0)
    cur = jax.lax.dynamic_slice(acc, start, out.shape)
    return jax.lax.dynamic_update_slice(acc, cur + out, start), None

  acc, _ = jax.lax.scan(body, acc, (jnp.asarray(oy), jnp.asarray(ox), wys, wxs))
  return acc


class WanVAE(nnx.Module):
  """The Wan2.1 VAE: `encode` (B,F,H,W,3) -> posterior mean (B,T,h,w,16); `decode` the inverse.

  `dtype` is both the parameter and the compute dtype; RMS norms and softmax run in float32. Outputs
  are float32. `precision` goes to every convolution and matmul (None: XLA's default).
  """

  def __init__(self, cfg: VAEConfig = VAEConfig(), *, dtype=jnp.float32, precision=None):
    self.cfg = cfg
    self.dtype = dtype
    kw = dict(dtype=dtype, precision=precision)
    self.encoder = Encoder(cfg, **kw)
    self.decoder = Decoder(cfg, **kw)
    self.quant_conv = CausalConv3d(2 * cfg.z_dim, 2 * cfg.z_dim, (1, 1, 1), **kw)
    self.post_quant_conv = CausalConv3d(cfg.z_dim, cfg.z_dim, (1, 1, 1), **kw)

  # --- public API -------------------------------------------------------------------------------

  def normalize(self, mean: jax.Array) -> jax.Array:
    """Posterior mean -> the denoiser's latents, with this VAE's latent statistics."""
    m, s = self.cfg.latent_stats
    return normalize(mean, latents_mean=m, latents_std=s)

  def denormalize(self, latents: jax.Array) -> jax.Array:
    """The denoiser's latents -> VAE latents (the inverse of `normalize`)."""
    m, s = self.cfg.latent_stats
    return denormalize(latents, latents_mean=m, latents_std=s)

  @dims(video="B F H W 3", returns="B T h w C")
  def encode(self, video: jax.Array, *, tile: int | None = None, overlap: int | None = None):
    """(B,F,H,W,3) in [-1,1] -> posterior mean (B,T,h,w,z), T = (F-1)//4 + 1, not normalised.

    As in the reference, the `(F-1) % 4` trailing frames that do not fill a chunk are ignored.
    H and W must be multiples of the spatial factor (8). `tile`/`overlap` override the config's.
    """
    video = jnp.asarray(video)
    cfg = self.cfg
    s = cfg.spatial_factor
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"encode expects a video (B,F,H,W,3), got shape {video.shape}")
    b, f, h, w, _ = video.shape
    if f < 1 or h % s or w % s:
      raise ValueError(
        f"encode needs at least one frame and H, W multiples of {s}; got F={f}, H={h}, W={w} "
        "(resize or crop the frames first)"
      )
    chunk = cfg.temporal_factor
    n = (f - 1) // chunk
    video = video[:, : 1 + n * chunk]
    plans = self._plans(
      h // s, w // s, tile or cfg.encode_tile, cfg.encode_overlap if overlap is None else overlap
    )
    graphdef, state = nnx.split(self)
    if isinstance(video, jax.core.Tracer) or cfg.chunk_bucket <= 0:
      return _encode_jit(graphdef, state, video, plans)  # exact length (differentiable)
    cap = bucket_chunks(n, cfg.chunk_bucket)
    video = _pad_time(video, 1 + cap * chunk)
    out = _encode_jit(graphdef, state, video, plans, jnp.int32(n))
    return out[:, : 1 + n]

  @dims(latents="B T h w C", returns="B F H W 3")
  def decode(self, latents: jax.Array, *, tile: int | None = None, overlap: int | None = None):
    """(B,T,h,w,z) posterior-mean latents (not normalised) -> (B,1+4(T-1),8h,8w,3) in [-1,1]."""
    latents = jnp.asarray(latents)
    cfg = self.cfg
    if latents.ndim != 5 or latents.shape[-1] != cfg.z_dim:
      raise ValueError(f"decode expects latents (B,T,h,w,{cfg.z_dim}), got shape {latents.shape}")
    if latents.shape[1] < 1:
      raise ValueError("decode needs at least one latent frame")
    plans = self._plans(
      latents.shape[2],
      latents.shape[3],
      tile or cfg.decode_tile,
      cfg.decode_overlap if overlap is None else overlap,
    )
    graphdef, state = nnx.split(self)
    if isinstance(latents, jax.core.Tracer) or cfg.chunk_bucket <= 0:
      return _decode_jit(graphdef, state, latents, plans)  # exact length (differentiable)
    n = latents.shape[1] - 1
    cap = bucket_chunks(n, cfg.chunk_bucket)
    out = _decode_jit(graphdef, state, _pad_time(latents, 1 + cap), plans, jnp.int32(n))
    return out[:, : 1 + n * cfg.temporal_factor]

  # --- implementation ---------------------------------------------------------------------------

  @staticmethod
  def _plans(h, w, tile, overlap):
    return plan_axis(h, tile, overlap), plan_axis(w, tile, overlap)

  def _encode(self, video, plans, n_valid=None):
    cfg = self.cfg
    x = video.astype(self.dtype)
    enc = self.encoder

    def stage_a(tile):
      return _causal_scan(
        lambda x0: enc.stage_a(x0, None, True),
        lambda xc, c: enc.stage_a(xc, c, False),
        tile,
        cfg.temporal_factor,
        n_valid,
      )

    t = 1 + (x.shape[1] - 1) // cfg.temporal_factor
    feats = _tiled(stage_a, x, plans, cfg.spatial_factor, 1, (t, enc.out_dim)).astype(self.dtype)
    out = _causal_scan(lambda x0: enc.stage_b(x0, None), enc.stage_b, feats, 1, n_valid)
    out, _ = self.quant_conv(out, None)
    return out[..., : cfg.z_dim].astype(jnp.float32)

  def _decode(self, latents, plans, n_valid=None):
    cfg = self.cfg
    dec = self.decoder
    x, _ = self.post_quant_conv(latents.astype(self.dtype), None)
    feats = _causal_scan(lambda x0: dec.stage_a(x0, None), dec.stage_a, x, 1, n_valid)

    def stage_b(tile):
      return _causal_scan(
        lambda x0: dec.stage_b(x0, None, True),
        lambda xc, c: dec.stage_b(xc, c, False),
        tile,
        1,
        n_valid,
      )

    f = 1 + (latents.shape[1] - 1) * cfg.temporal_factor
    out = _tiled(stage_b, feats, plans, 1, cfg.spatial_factor, (f, 3))
    return jnp.clip(out.astype(jnp.float32), -1.0, 1.0)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _encode_jit(graphdef, state, video, plans, n_valid=None):
  return nnx.merge(graphdef, state)._encode(video, plans, n_valid)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode_jit(graphdef, state, latents, plans, n_valid=None):
  return nnx.merge(graphdef, state)._decode(latents, plans, n_valid)


def bucket_chunks(n: int, bucket: int) -> int:
  """Chunks after the first frame, padded up to a multiple of `bucket` (0 stays 0: images)."""
  return 0 if n == 0 or bucket <= 0 else -(-n // bucket) * bucket


def _pad_time(x: jax.Array, length: int) -> jax.Array:
  if x.shape[1] == length:
    return x
  return jnp.pad(x, ((0, 0), (0, length - x.shape[1])) + ((0, 0),) * (x.ndim - 2))


def randomize(model: WanVAE, seed: int = 0, gain: float = 1.0) -> WanVAE:
  """Fills every parameter with PyTorch-default-like random values, in place (tests and benchmarks).

  Convolution weights and biases ~ U(-b, b) with b = gain / sqrt(fan_in) (PyTorch's default
  `kaiming_uniform_(a=sqrt(5))` bound); RMS-norm gammas stay one. Parameter i of the sorted paths
  draws from `np.random.default_rng([seed, i])`, on the host: drawn with `jax.random`, each of the
  ~140 shapes compiled a program of its own (10 s of a 12-s VAE benchmark on a CPU).
  """
  state = nnx.state(model, nnx.Param)
  flat = dict(nnx.to_flat_state(state))
  fan_in = {}
  for path, var in flat.items():
    if path[-1] in ("weight", "to_qkv_weight", "proj_weight"):
      fan_in[path[:-1] + (path[-1].replace("weight", ""),)] = int(np.prod(var.shape[:-1]))
  for i, (path, var) in enumerate(sorted(flat.items(), key=lambda kv: str(kv[0]))):
    if path[-1] == "gamma":
      continue
    stem = path[-1].replace("weight", "").replace("bias", "")
    bound = gain / np.sqrt(fan_in[path[:-1] + (stem,)])
    value = var.get_value()
    draw = np.random.default_rng([seed, i]).uniform(-bound, bound, value.shape)
    flat[path] = var.replace(value=jnp.asarray(draw.astype(np.float32), value.dtype))
  nnx.update(model, nnx.from_flat_state(flat))
  return model
