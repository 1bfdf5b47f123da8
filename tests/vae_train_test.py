"""VAE training loop: the loss falls, the training forward equals the public one, the saved folder
round-trips through `load_vae`, and custom latent statistics for `normalize`."""

import pathlib

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from o2a_jax.config_lib import load_config_file
from o2a_jax.convert import load_vae
from o2a_jax.convert.vae import read_latent_stats, save_vae
from o2a_jax.puppet import vae_train as T
from o2a_jax.vae import LATENTS_MEAN, LATENTS_STD, denormalize, normalize
from o2a_jax.vae.model import _causal_scan

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "o2a.py"

# A tiny config: 4 base channels, 16x16 frames (2x2 latents).
CFG = T.TrainConfig(base_dim=4, lr=3e-3, warmup=2, steps=24, batch=2, frames=1, seed=0)


def _clips(n=3, f=5, size=16, seed=0):
  """Flat-coloured squares on flat backgrounds, uint8 (F,H,W,3), moving by a pixel per frame."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    v = np.empty((f, size, size, 3), np.uint8)
    v[:] = rng.integers(0, 256, 3, dtype=np.uint8)
    y, x = rng.integers(0, size // 2, 2)
    for t in range(f):
      v[t, y : y + 6, x + t // 2 : x + t // 2 + 6] = rng.integers(0, 256, 3, dtype=np.uint8)
    out.append(v)
  return out


@pytest.fixture(scope="module")
def trained():
  vae = T.new_vae(CFG)
  first = next(T.clip_batches(_clips(), CFG.batch, CFG.frames, seed=1))

  def same_batch():
    while True:
      yield first

  log = T.train(vae, same_batch(), CFG, progress=False, log_every=1)
  return vae, log


def test_loss_falls(trained):
  _, log = trained
  losses = [m["mse"] for m in log]
  assert len(losses) == CFG.steps
  assert np.all(np.isfinite(losses))
  print(f"mse first 3 {np.mean(losses[:3]):.4f} last 3 {np.mean(losses[-3:]):.4f}")
  assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3])


def test_causal_unrolled_equals_causal_scan():
  x = jnp.arange(2 * 9 * 3, dtype=jnp.float32).reshape(2, 9, 3)

  def step(xc, cache):  # running sum as the "cache"
    c = cache + jnp.sum(xc, axis=1, keepdims=True)
    return xc * c, c

  first = lambda x0: (x0 * 2, x0)  # noqa: E731
  ref = _causal_scan(first, step, x, 4)
  np.testing.assert_array_equal(T._causal_unrolled(first, step, x, 4), ref)


@pytest.mark.slow
def test_fast_forward_equals_public_encode_decode(trained):
  vae, _ = trained
  x = _clips(1, f=5)[0][None].astype(np.float32) / 127.5 - 1
  ours = np.asarray(T.reconstruct(vae, x))
  public = np.asarray(vae.decode(vae.encode(x)))
  assert ours.shape == public.shape == (1, 5, 16, 16, 3)
  err = np.linalg.norm(ours - public) / np.linalg.norm(public)
  assert err < 1e-5, err
  np.testing.assert_allclose(T.encode_mean(vae, x), vae.encode(x), rtol=0, atol=1e-5)


def test_save_load_roundtrip(trained, tmp_path):
  vae, _ = trained
  mean, std = T.latent_stats(vae, _clips(2, f=5))
  assert len(mean) == len(std) == 16 and min(std) > 0
  path = save_vae(vae, tmp_path / "vae", latents_mean=mean, latents_std=std, extra={"x": 1})
  save_vae(vae, path, latents_mean=mean, latents_std=std)  # replacing an existing folder works
  loaded = load_vae(path)
  assert loaded.cfg.base_dim == 4 and loaded.cfg.dim_mult == CFG.dim_mult
  a = dict(nnx.to_flat_state(nnx.state(vae, nnx.Param)))
  b = dict(nnx.to_flat_state(nnx.state(loaded, nnx.Param)))
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_array_equal(np.asarray(a[k].get_value()), np.asarray(b[k].get_value()))
  m2, s2 = read_latent_stats(path)
  np.testing.assert_allclose(m2, mean)
  np.testing.assert_allclose(s2, std)
  # The loaded VAE carries its statistics: normalize/denormalize use them, not Wan's, and a
  # re-save without explicit statistics keeps them.
  np.testing.assert_allclose(loaded.cfg.latents_mean, mean, rtol=1e-6)
  z = jnp.asarray(np.random.default_rng(0).normal(size=(1, 2, 2, 2, 16)), jnp.float32)
  want = normalize(z, latents_mean=mean, latents_std=std)
  np.testing.assert_allclose(loaded.normalize(z), want, rtol=1e-6)
  np.testing.assert_allclose(loaded.denormalize(want), z, rtol=1e-5, atol=1e-6)
  assert not np.allclose(loaded.normalize(z), normalize(z))  # differs from the Wan constants
  resaved = load_vae(save_vae(loaded, tmp_path / "again"))
  assert resaved.cfg.latents_std == loaded.cfg.latents_std
  assert vae.cfg.latents_mean is None and vae.cfg.latent_stats == (LATENTS_MEAN, LATENTS_STD)


def test_read_latent_stats_missing(tmp_path):
  with pytest.raises(FileNotFoundError):
    read_latent_stats(tmp_path)
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(ValueError, match="latents_mean"):
    read_latent_stats(tmp_path)


def test_normalize_custom_statistics():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 16)), jnp.float32)
  mu, sd = np.linspace(-1, 1, 16), np.linspace(0.5, 2, 16)
  z = normalize(x, latents_mean=mu, latents_std=sd)
  np.testing.assert_allclose(z, (np.asarray(x) - mu) / sd, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(denormalize(z, latents_mean=mu, latents_std=sd), x, atol=1e-5)
  # the defaults stay the Wan constants
  np.testing.assert_allclose(normalize(x), (np.asarray(x) - LATENTS_MEAN) / np.asarray(LATENTS_STD),
                             rtol=1e-5, atol=1e-6)  # fmt: skip
  with pytest.raises(ValueError, match="one entry per latent channel"):
    normalize(x, latents_mean=mu[:4], latents_std=sd[:4])


def test_clip_batches_checks_and_shapes():
  it = T.clip_batches(_clips(2, f=9, size=32), 3, 5, seed=0, crop=16)
  b = next(it)
  assert b.shape == (3, 5, 16, 16, 3) and b.dtype == np.float32 and -1 <= b.min() <= b.max() <= 1
  with pytest.raises(ValueError, match="shorter"):
    next(T.clip_batches(_clips(1, f=3), 1, 5, seed=0))
  with pytest.raises(ValueError, match="multiple of 8"):
    next(T.clip_batches(_clips(1, f=5, size=32), 1, 5, seed=0, crop=12))


def test_still_clip_consistency_term():
  """The consistency term is the still clip's latent-frame difference over the batch's latent
  variance: it matches a direct computation, ignores a common scale of the latents, and its
  training lowers it."""
  cfg = T.TrainConfig(base_dim=4, lr=3e-3, warmup=2, steps=30, batch=2, frames=5, seed=0,
                      consistency=1.0, kl_weight=0.0)  # fmt: skip
  vae = T.new_vae(cfg)
  clips = _clips(2, f=5)
  x = jnp.asarray(np.stack(clips).astype(np.float32) / 127.5 - 1)
  _, aux = T.loss_fn(vae, x, None, 0.0, sample=False, consistency=1.0)
  mu = T.posterior(vae, x)[0]
  still = T.posterior(vae, jnp.broadcast_to(x[:, :1], x.shape))[0]
  want = jnp.mean((still[:, 1:] - still[:, :1]) ** 2 / (jnp.var(mu, axis=(0, 1, 2, 3)) + 1e-6))
  np.testing.assert_allclose(aux["consistency"], want, rtol=1e-5)
  assert float(aux["consistency"]) > 0
  # Scaling the encoder's output scales numerator and denominator alike.
  q = vae.quant_conv  # mu and log-variance, 1x1x1
  w = q.weight[...]
  q.weight[...] = w * 3.0
  q.bias[...] = q.bias[...] * 3.0
  _, aux3 = T.loss_fn(vae, x, None, 0.0, sample=False, consistency=1.0)
  np.testing.assert_allclose(aux3["consistency"], aux["consistency"], rtol=1e-3)
  q.weight[...] = w
  q.bias[...] = q.bias[...] / 3.0
  # No term (and the metric 0) when the weight is 0.
  _, aux0 = T.loss_fn(vae, x, None, 0.0, sample=False)
  assert float(aux0["consistency"]) == 0.0
  # Training with the term lowers it (normalised by the latent std, as the script reports).
  before = T.still_consistency(vae, clips, latents_std=T.latent_stats(vae, clips)[1])
  batches = T.clip_batches(clips, cfg.batch, cfg.frames, seed=1)
  T.train(vae, batches, cfg, progress=False)
  after = T.still_consistency(vae, clips, latents_std=T.latent_stats(vae, clips)[1])
  print(f"still-clip consistency {before:.4f} -> {after:.4f}")
  assert after < 0.5 * before


def test_temporal_downsample_pattern():
  assert T.temporal_downsample(3) == (False, True, True)  # Wan2.1: 8x space, 4x time
  assert T.temporal_downsample(2) == (True, True)  # 4x space, still 4x time
  with pytest.raises(ValueError, match="at least 2"):
    T.temporal_downsample(1)


@pytest.mark.parametrize("patch", [0, 2])
def test_four_x_vae_drives_the_puppet_config_and_sampler(tmp_path, patch):
  """A VAE of three stages (4x in space) trains, saves, and sets the puppet config's patch to 4
  (patch x VAE stride = the pose encoder's 16), or with `patch=2` a pose encoder of three stages
  (8x); the denoiser built from that config samples a chunk through the project's sampler, at the
  pixel size the 4x latents decode to, and its official export reads back as the same
  architecture."""
  from o2a_jax.convert import load_official, save_official
  from o2a_jax.sampling.chunk import generate_chunk
  from o2a_jax.train import trainer

  cfg = T.TrainConfig(base_dim=4, dim_mult=(1, 2, 2), lr=3e-3, warmup=1, steps=2, batch=1, frames=5)
  vae = T.new_vae(cfg)
  assert vae.cfg.spatial_factor == 4 and vae.cfg.temporal_factor == 4
  T.train(vae, T.clip_batches(_clips(), cfg.batch, cfg.frames, seed=0), cfg, progress=False)
  mean, std = T.latent_stats(vae, _clips(2, f=5))
  folder = save_vae(vae, tmp_path / "vae4", latents_mean=mean, latents_std=std)

  arg = f"model=tiny,puppet,stage=2,small,vae={folder}" + (f",patch={patch}" if patch else "")
  c = load_config_file(CONFIG, arg)
  p = patch or 4
  assert tuple(c.model.patch_size) == (1, p, p)
  stages = 3 if patch == 2 else 4
  assert len(c.model.hint_channels) == stages
  assert tuple(c.model.hint_time_down) == (False, True, True, False)[:stages]
  assert tuple(c.vae.dim_mult) == (1, 2, 2) and tuple(c.vae.temperal_downsample) == (True, True)
  c.vae.path = ""  # the template path of `o2a convert run`: the architecture from the config alone
  assert trainer.build_vae(c).cfg.spatial_factor == 4
  model = trainer.build_model(c)  # random init (no init.checkpoint)
  loaded = load_vae(folder)
  rng = np.random.default_rng(0)
  hh = ww = 32
  out = generate_chunk(
    model, loaded, rng.integers(0, 256, (hh, ww, 3), dtype=np.uint8), np.zeros((hh, ww)),
    rng.uniform(-1, 1, (5, hh, ww, 3)), rng.uniform(-1, 1, (1, hh, ww, 3)),
    np.zeros((7, c.model.text_dim)), np.zeros((7, c.model.text_dim)),
    rng.normal(size=(2, hh // 4, ww // 4, 16)), steps=1, image_guidance=1.0, pose_guidance=1.0,
  )  # fmt: skip
  assert out.shape == (5, hh, ww, 3) and np.isfinite(out).all()
  save_official(model, tmp_path / "model")
  back = load_official(tmp_path / "model", num_heads=c.model.num_heads, head_dim=c.model.head_dim)
  assert back.cfg.patch_size == model.cfg.patch_size
  assert back.cfg.hint_time_down == model.cfg.hint_time_down
  assert back.cfg.spatial_down == model.cfg.spatial_down == p * 4


def test_puppet_config_patch_checks(tmp_path):
  """`patch=` must make a pose encoder that halves space at least three times (it halves time
  twice) and goes with `puppet` only."""
  with pytest.raises(ValueError, match="power of two >= 8"):
    load_config_file(CONFIG, "model=tiny,puppet,patch=3")
  cfg = T.TrainConfig(base_dim=4, dim_mult=(1, 2, 2), steps=0)
  folder = save_vae(T.new_vae(cfg), tmp_path / "vae4", latents_mean=[0.0] * 16,
                    latents_std=[1.0] * 16)  # fmt: skip
  with pytest.raises(ValueError, match="power of two >= 8"):
    load_config_file(CONFIG, f"model=tiny,puppet,vae={folder},patch=1")
  with pytest.raises(KeyError, match="go with puppet"):
    load_config_file(CONFIG, "model=tiny,patch=2")


def test_puppet_config_refuses_a_vae_stride_the_pose_encoder_cannot_match(tmp_path):
  cfg = T.TrainConfig(base_dim=4, dim_mult=(1, 1, 1, 1, 1, 1), steps=0)
  folder = save_vae(T.new_vae(cfg), tmp_path / "vae32", latents_mean=[0.0] * 16,
                    latents_std=[1.0] * 16)  # fmt: skip

  with pytest.raises(ValueError, match="spatial stride 32"):
    load_config_file(CONFIG, f"model=tiny,puppet,vae={folder}")


def test_decoder_only_training_keeps_the_encoder():
  """parts="decoder" trains the decoder and post_quant_conv only: the encoder (and so the latent
  space a denoiser was trained in) is bit-identical afterwards; the consistency term, which
  trains the encoder, is refused with it."""
  cfg = T.TrainConfig(base_dim=4, lr=3e-3, warmup=1, steps=3, batch=1, frames=5, parts="decoder")
  vae = T.new_vae(cfg)
  before = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(vae, nnx.Param))}
  T.train(vae, T.clip_batches(_clips(), cfg.batch, cfg.frames, seed=0), cfg, progress=False)
  after = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(vae, nnx.Param))}
  changed = {k[0] for k in before if not np.array_equal(before[k], after[k])}
  assert changed == {"decoder", "post_quant_conv"}
  with pytest.raises(ValueError, match="consistency"):
    T.TrainConfig(parts="decoder", consistency=0.1)
  with pytest.raises(ValueError, match="parts"):
    T.TrainConfig(parts="encoder")
