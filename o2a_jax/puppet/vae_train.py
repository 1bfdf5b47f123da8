"""Training a small Wan VAE (same architecture, narrower channels) from scratch, e.g. on puppets.

The model is the project's `WanVAE` (causal 3-D convolutions, 16 latent channels, 4x temporal
compression; 2^(len(dim_mult) - 1) spatial: 8x as Wan2.1, 4x with three stages) with a reduced
`VAEConfig` (`base_dim`, `dim_mult`, `num_res_blocks`), initialised like PyTorch's defaults
(`init_params`).

Loss (per element means): `MSE(decode(z), x) + kl_weight * KL(q(z|x) || N(0,1))` with
`z = mu + sigma * eps` sampled from the posterior (`quant_conv` gives mu and log sigma^2, log
sigma^2 clipped to [-30, 20] as diffusers' `DiagonalGaussianDistribution`); `recon="l1"` or
`"mse+l1"` select the other reconstruction terms. MSE, not L1, is the default: puppets cover a small
part of a flat background, and L1's sign gradient holds the model at the background median (measured
here: 200 Adam steps with L1 left the held-out PSNR at the untrained 11 dB, the decoder printing a
flat colour), while MSE weights the large foreground errors. The small KL term keeps the latent
scale bounded so the denoiser's normalised latents are well behaved. The decoder output is not
clamped inside the loss (clamping would zero the gradient of saturated pixels); `WanVAE.decode`
clamps as the reference does.

Optimiser: optax Adam with global-norm clipping and a warm-up + cosine schedule, one jitted step
(`make_step`), parameters and optimiser state donated.

Saving (`o2a_jax.convert.vae.save_vae`): a folder in the diffusers `AutoencoderKLWan` layout that
`o2a_jax.convert.load_vae` reads: `diffusion_pytorch_model.safetensors` (diffusers keys, PyTorch
layouts, float32) and `config.json` with the constructor arguments plus `latents_mean` /
`latents_std`, the per-channel statistics of the posterior means (diffusers stores the Wan
constants under these names too). `read_latent_stats` returns them for
`o2a_jax.vae.normalize(mean, latents_mean=..., latents_std=...)`. The folder is written atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from o2a_jax.metrics.pixels import psnr
from o2a_jax.vae.model import VAEConfig, WanVAE

TRAIN_PARTS = ("all", "decoder")


def trainable(parts: str):
  """The nnx filter of the parameters that train under `TrainConfig.parts`."""
  if parts == "all":
    return nnx.Param
  decoder = nnx.Any(nnx.PathContains("decoder"), nnx.PathContains("post_quant_conv"))
  return nnx.All(nnx.Param, decoder)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """VAE architecture and optimisation settings."""

  base_dim: int = 16
  dim_mult: tuple[int, ...] = (1, 2, 2, 2)
  num_res_blocks: int = 1
  z_dim: int = 16
  lr: float = 1e-3
  b1: float = 0.9
  # A short second-moment memory: the gradient norm falls 10-100x over the first steps, and with
  # b2 = 0.999 Adam keeps dividing by the early large gradients for ~1000 steps.
  b2: float = 0.95
  warmup: int = 50
  steps: int = 1000
  batch: int = 4
  frames: int = 5  # pixel frames per training clip (4k+1)
  kl_weight: float = 1e-4
  sample: bool = True  # decode a posterior sample (True) or the posterior mean (False)
  recon: str = "mse"  # reconstruction loss: "mse", "l1" or "mse+l1"
  grad_clip: float = 1.0
  seed: int = 0
  # Weight of the temporal latent-consistency term (0 = off): see `loss_fn`.
  consistency: float = 0.0
  # What trains: "all", or "decoder" (the decoder and post_quant_conv; the encoder and its
  # latent space stay as they are, so a denoiser trained on those latents stays valid).
  parts: str = "all"

  def __post_init__(self):
    if self.parts not in TRAIN_PARTS:
      raise ValueError(f"parts must be one of {TRAIN_PARTS}, got {self.parts!r}")
    if self.parts == "decoder" and self.consistency > 0:
      raise ValueError("the consistency term trains the encoder; it needs parts='all'")

  def vae_config(self) -> VAEConfig:
    return VAEConfig(
      base_dim=self.base_dim,
      z_dim=self.z_dim,
      dim_mult=tuple(self.dim_mult),
      num_res_blocks=self.num_res_blocks,
      temperal_downsample=temporal_downsample(len(self.dim_mult) - 1),
    )


def temporal_downsample(stages: int) -> tuple[bool, ...]:
  """Which of `stages` spatial downsamplings also halve time: the last two (4x, as Wan2.1: 3
  stages give (False, True, True); 2 stages, a 4x-spatial VAE, give (True, True))."""
  if stages < 2:
    raise ValueError(f"the VAE needs at least 2 downsampling stages (4x in time), got {stages}")
  return (False,) * (stages - 2) + (True, True)


def _zero_init(path: tuple) -> bool:
  """Last layer of every residual branch (conv2) and the attention output projection."""
  return (len(path) >= 2 and path[-2] == "conv2") or path[-1] in ("proj_weight", "proj_bias")


def init_params(vae: WanVAE, seed: int, *, zero_residual: bool = True) -> WanVAE:
  """PyTorch-default-like init in place, drawn with numpy (as `model.randomize`, whose per-shape
  `jax.random` programs take minutes to compile on a busy CPU): weights and biases ~ U(-b, b) with
  b = 1 / sqrt(fan_in) of the layer's weight; RMS-norm gammas stay one."""
  flat = dict(nnx.to_flat_state(nnx.state(vae, nnx.Param)))
  fan_in = {}
  for path, var in flat.items():
    if path[-1] in ("weight", "to_qkv_weight", "proj_weight"):
      fan_in[path[:-1] + (path[-1].replace("weight", ""),)] = int(np.prod(var.shape[:-1]))
  rng = np.random.default_rng(seed)
  for path in sorted(flat, key=str):
    var = flat[path]
    if path[-1] == "gamma":
      continue
    if zero_residual and _zero_init(path):
      flat[path] = var.replace(value=jnp.zeros(var.shape, var.get_value().dtype))
      continue
    stem = path[-1].replace("weight", "").replace("bias", "")
    bound = 1.0 / np.sqrt(fan_in[path[:-1] + (stem,)])
    value = rng.uniform(-bound, bound, var.shape).astype(np.float32)
    flat[path] = var.replace(value=jnp.asarray(value, var.get_value().dtype))
  nnx.update(vae, nnx.from_flat_state(flat))
  return vae


def new_vae(cfg: TrainConfig) -> WanVAE:
  """A freshly initialised VAE (PyTorch-default-like uniform init)."""
  return init_params(WanVAE(cfg.vae_config()), cfg.seed)


def _causal_unrolled(step_first, step, x, chunk: int):
  """`model._causal_scan` as a Python loop over the chunks.

  Differentiating through `lax.scan` is pathologically slow on XLA's CPU backend here (decoder
  gradient for 2 latent frames: 17 s with the scan, 0.15 s per frame unrolled), and training clips
  are short, so the few chunks are unrolled.
  """
  y0, cache = step_first(x[:, :1])
  ys = [y0]
  for s in range(1, x.shape[1] - chunk + 1, chunk):
    y, cache = step(x[:, s : s + chunk], cache)
    ys.append(y)
  return jnp.concatenate(ys, axis=1)


# --- forward pieces with the full posterior (the public encode returns only the mean) -------------


def posterior(vae: WanVAE, video: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(B,F,H,W,3) -> (mu, logvar), each (B,T,h,w,z); untiled (training crops are small)."""
  cfg = vae.cfg
  enc = vae.encoder
  x = video.astype(vae.dtype)
  feats = _causal_unrolled(
    lambda x0: enc.stage_a(x0, None, True),
    lambda xc, c: enc.stage_a(xc, c, False),
    x,
    cfg.temporal_factor,
  )
  out = _causal_unrolled(lambda x0: enc.stage_b(x0, None), enc.stage_b, feats, 1)
  out, _ = vae.quant_conv(out, None)
  out = out.astype(jnp.float32)
  mu, logvar = out[..., : cfg.z_dim], out[..., cfg.z_dim :]
  return mu, jnp.clip(logvar, -30.0, 20.0)


def decode_unclamped(vae: WanVAE, z: jax.Array) -> jax.Array:
  """(B,T,h,w,z) -> (B,1+4(T-1),8h,8w,3) without the final clamp; untiled."""
  dec = vae.decoder
  x, _ = vae.post_quant_conv(z.astype(vae.dtype), None)
  feats = _causal_unrolled(lambda x0: dec.stage_a(x0, None), dec.stage_a, x, 1)
  out = _causal_unrolled(
    lambda x0: dec.stage_b(x0, None, True),
    lambda xc, c: dec.stage_b(xc, c, False),
    feats,
    1,
  )
  return out.astype(jnp.float32)


RECON_LOSSES = ("mse", "l1", "mse+l1")


def loss_fn(
  vae: WanVAE,
  video: jax.Array,
  key: jax.Array,
  kl_weight: float,
  sample: bool = True,
  recon_loss: str = "mse",
  consistency: float = 0.0,
):
  """Returns (loss, {"l1", "mse", "kl", "consistency"}) for a (B,F,H,W,3) batch in [-1,1].

  `consistency` > 0 adds that weight times the mean squared difference between the latent frames
  of a still clip (the batch's first frames repeated F times), per channel over the variance of
  the batch's latents. The first latent frame encodes one image alone, the others four frames
  each, and nothing else asks the two codes to agree. Without it the small VAE learns two codes
  (the shipped puppet VAE: for still clips the first latent frame differs from the others by 2.2
  in normalised units, 16 held-out clips, while the later frames agree to 0.2-0.4), so a
  reference image, which is encoded as a first frame, says little about a video's later latent
  frames, and the denoiser cannot copy it there.
  """
  if recon_loss not in RECON_LOSSES:
    raise ValueError(f"unknown reconstruction loss {recon_loss!r}; choose one of {RECON_LOSSES}")
  mu, logvar = posterior(vae, video)
  cons = jnp.zeros((), jnp.float32)
  if consistency > 0:
    still, _ = posterior(vae, jnp.broadcast_to(video[:, :1], video.shape))
    # In units of the batch's per-channel latent variance, differentiated too, so that the term
    # does not change when all latents are scaled: in raw units, or with the variance held
    # constant, the encoder meets it by shrinking every latent (measured: 24x smaller raw
    # difference, unchanged relative to the latents' spread; with the variance held, the stds
    # fell 3-10x in 300 steps).
    var = jnp.var(mu, axis=(0, 1, 2, 3)) + 1e-6
    cons = jnp.mean((still[:, 1:] - still[:, :1]) ** 2 / var)
  z = mu
  if sample:
    z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(key, mu.shape, mu.dtype)
  recon = decode_unclamped(vae, z)
  err = recon - video[:, : recon.shape[1]]
  l1, mse = jnp.mean(jnp.abs(err)), jnp.mean(err * err)
  kl = 0.5 * jnp.mean(mu * mu + jnp.exp(logvar) - 1.0 - logvar)
  rec = {"mse": mse, "l1": l1, "mse+l1": mse + l1}[recon_loss]
  return rec + kl_weight * kl + consistency * cons, {
    "l1": l1,
    "mse": mse,
    "kl": kl,
    "consistency": cons,
  }


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
    0.0, cfg.lr, max(1, cfg.warmup), max(cfg.steps, cfg.warmup + 1), end_value=0.1 * cfg.lr
  )
  return optax.chain(
    optax.clip_by_global_norm(cfg.grad_clip), optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
  )


def make_step(
  graphdef,
  tx: optax.GradientTransformation,
  kl_weight: float,
  sample: bool = True,
  recon_loss: str = "mse",
  consistency: float = 0.0,
):
  """The jitted train step: (params, frozen, opt_state, video, key) -> (params, opt_state,
  metrics); `frozen` holds the parameters that do not train."""

  def step(params, frozen, opt_state, video, key):
    def f(p):
      vae = nnx.merge(graphdef, p, frozen)
      return loss_fn(vae, video, key, kl_weight, sample, recon_loss, consistency)

    (loss, aux), grads = jax.value_and_grad(f, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    return params, opt_state, {"loss": loss, **aux, "grad_norm": optax.global_norm(grads)}

  return jax.jit(step, donate_argnums=(0, 2))  # params, opt_state


def train(
  vae: WanVAE,
  batches: Iterator[np.ndarray],
  cfg: TrainConfig,
  *,
  progress: bool = True,
  log_every: int = 25,
) -> list[dict]:
  """Trains `vae` in place for `cfg.steps` steps on (B,F,H,W,3) float batches in [-1,1].

  Returns the logged metrics (every `log_every` steps and the last one).
  """
  from tqdm import tqdm

  graphdef, params, frozen = nnx.split(vae, trainable(cfg.parts), ...)
  tx = make_optimizer(cfg)
  opt_state = tx.init(params)
  step = make_step(graphdef, tx, cfg.kl_weight, cfg.sample, cfg.recon, cfg.consistency)
  key = jax.random.key(cfg.seed + 1)
  log = []
  bar = tqdm(range(cfg.steps), desc="vae train", disable=not progress)
  t0 = time.perf_counter()
  for i in bar:
    video = jnp.asarray(next(batches))
    params, opt_state, m = step(params, frozen, opt_state, video, jax.random.fold_in(key, i))
    if i % log_every == 0 or i == cfg.steps - 1:
      m = {k: float(v) for k, v in m.items()}
      if not np.isfinite(m["loss"]):
        raise FloatingPointError(f"VAE training diverged at step {i}: {m}")
      m.update(step=i, seconds=time.perf_counter() - t0)
      log.append(m)
      bar.set_postfix(
        loss=f"{m['loss']:.4f}", mse=f"{m['mse']:.4f}", kl=f"{m['kl']:.2f}",
        cons=f"{m['consistency']:.3f}",
      )  # fmt: skip
  nnx.update(vae, params)
  return log


# --- data ----------------------------------------------------------------------------------------


def clip_batches(
  videos: list[np.ndarray],
  batch: int,
  frames: int,
  seed: int,
  *,
  crop: int | None = None,
  flip: bool = True,
) -> Iterator[np.ndarray]:
  """Endless random (B,F,H,W,3) float32 [-1,1] clips from uint8 (N,H,W,3) videos of one size.

  `crop`: random square crops of this size (a multiple of 8; convolutions are translation
  equivariant, so small crops train the same filters at a fraction of the cost).
  """
  if not videos:
    raise ValueError("clip_batches: no videos given")
  usable = [v for v in videos if len(v) >= frames]
  if not usable:
    raise ValueError(f"clip_batches: every video is shorter than {frames} frames")
  h, w = usable[0].shape[1:3]
  if crop is not None and (crop % 8 or crop > min(h, w)):
    raise ValueError(f"clip_batches: crop must be a multiple of 8 and <= {min(h, w)}, got {crop}")
  rng = np.random.default_rng(seed)
  while True:
    out = []
    for _ in range(batch):
      v = usable[int(rng.integers(len(usable)))]
      s = int(rng.integers(len(v) - frames + 1))
      c = v[s : s + frames]
      if crop is not None:
        y, x = int(rng.integers(h - crop + 1)), int(rng.integers(w - crop + 1))
        c = c[:, y : y + crop, x : x + crop]
      if flip and rng.random() < 0.5:
        c = c[:, :, ::-1]
      out.append(c)
    yield np.stack(out).astype(np.float32) / 127.5 - 1.0


@functools.partial(jax.jit, static_argnums=0)
def _encode_mean(graphdef, state, video):
  return posterior(nnx.merge(graphdef, state), video)[0]


@functools.partial(jax.jit, static_argnums=0)
def _reconstruct(graphdef, state, video):
  vae = nnx.merge(graphdef, state)
  return jnp.clip(decode_unclamped(vae, posterior(vae, video)[0]), -1.0, 1.0)


def reconstruct(vae: WanVAE, video) -> jax.Array:
  """`vae.decode(vae.encode(video))` (untiled, clamped)."""
  graphdef, state = nnx.split(vae)
  return _reconstruct(graphdef, state, jnp.asarray(video, jnp.float32))


def encode_mean(vae: WanVAE, video) -> jax.Array:
  """`vae.encode(video)` (untiled) with the fast CPU convolution."""
  graphdef, state = nnx.split(vae)
  return _encode_mean(graphdef, state, jnp.asarray(video, jnp.float32))


def reconstruction_psnr(vae: WanVAE, clips: list[np.ndarray]) -> float:
  """Mean PSNR of decode(encode(x)) (clamped to [-1,1]) over uint8 (F,H,W,3) clips."""
  scores = []
  for c in clips:
    x = c[None].astype(np.float32) / 127.5 - 1.0
    y = np.asarray(reconstruct(vae, x))
    scores.append(psnr(y, x[:, : y.shape[1]], data_range=2.0))  # [-1, 1] pixels
  return float(np.mean(scores))


def still_consistency(vae: WanVAE, clips: list[np.ndarray], latents_std=None) -> float:
  """Mean squared difference between the first latent frame of a still clip (each uint8 clip's
  first frame repeated over its length) and its later latent frames, divided per channel by
  `latents_std`**2 when given (normalised units): 0 when the one-image code and the four-frame
  code agree (`loss_fn`'s consistency term)."""
  out = []
  for c in clips:
    still = np.broadcast_to(c[:1], c.shape)[None].astype(np.float32) / 127.5 - 1.0
    mu = encode_mean(vae, still)[0]
    d = (mu[1:] - mu[:1]) ** 2
    if latents_std is not None:
      d = d / jnp.asarray(latents_std, jnp.float32) ** 2
    out.append(float(jnp.mean(d)))
  return float(np.mean(out))


def latent_stats(vae: WanVAE, clips: list[np.ndarray]) -> tuple[list[float], list[float]]:
  """Per-channel mean and std of the posterior means of uint8 (F,H,W,3) clips."""
  zs = [np.asarray(encode_mean(vae, c[None].astype(np.float32) / 127.5 - 1.0)) for c in clips]
  flat = np.concatenate([z.reshape(-1, z.shape[-1]) for z in zs]).astype(np.float64)
  return [float(v) for v in flat.mean(0)], [float(v) for v in flat.std(0)]
