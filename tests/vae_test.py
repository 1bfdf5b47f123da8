"""Wan2.1 VAE: parity with diffusers `AutoencoderKLWan` (fixture vae_tiny), tiling, loader
strictness."""

import pathlib
import re

import jax.numpy as jnp
import numpy as np
import pytest

from o2a_jax.convert import load_vae
from o2a_jax.io.safetensors import TensorSource, save_dict
from o2a_jax.vae import LATENTS_MEAN, LATENTS_STD, WanVAE, denormalize, normalize

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "vae_tiny"


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def cl(x):
  """PyTorch (B,C,T,H,W) -> channels-last (B,T,H,W,C)."""
  return np.moveaxis(x, 1, -1)


@pytest.fixture(scope="module")
def io():
  return dict(np.load(FIXTURE / "io.npz"))


@pytest.fixture(scope="module")
def vae():
  return load_vae(FIXTURE)


@pytest.fixture(scope="module")
def outputs(vae, io):
  """The four fixture cases, computed once (untiled: the 6x8 latent grid is one tile)."""
  return {
    "latent_mode": vae.encode(cl(io["video"])),
    "image_latent_mode": vae.encode(cl(io["image"])),
    "decoded": vae.decode(cl(io["z"])),
    "decoded_image": vae.decode(cl(io["z"])[:, :1]),
  }


@pytest.mark.parametrize("case", ["latent_mode", "image_latent_mode", "decoded", "decoded_image"])
def test_parity_with_diffusers(outputs, io, case):
  out, ref = np.asarray(outputs[case]), cl(io[case])
  assert out.shape == ref.shape and out.dtype == np.float32
  assert rel(out, ref) < 1e-4, rel(out, ref)


def test_shapes_and_clamp(outputs):
  assert outputs["latent_mode"].shape == (1, 3, 6, 8, 16)
  assert outputs["decoded"].shape == (1, 9, 48, 64, 3)
  assert float(jnp.max(jnp.abs(outputs["decoded"]))) <= 1.0


def test_trailing_frames_ignored_like_reference(vae, io, outputs):
  video = cl(io["video"])
  extra = np.concatenate(
    [video, video[:, -2:]], axis=1
  )  # 11 frames: (11-1)//4 + 1 = 3 latent frames
  np.testing.assert_allclose(vae.encode(extra), outputs["latent_mode"], rtol=0, atol=1e-6)


def test_one_compilation_serves_every_frame_count(vae, io, outputs):
  """Frame counts in one chunk bucket share one compiled encode and one decode program."""
  from o2a_jax.vae.model import _decode_jit, _encode_jit

  video, z = cl(io["video"]), cl(io["z"])  # 9 frames, 3 latent frames
  enc0, dec0 = _encode_jit._cache_size(), _decode_jit._cache_size()
  enc5 = vae.encode(video[:, :5])  # 2 latent frames
  enc9 = vae.encode(video)
  dec2 = vae.decode(z[:, :2])
  dec3 = vae.decode(z)
  # The fixture cases above already compiled the bucket, so nothing new is compiled here.
  assert _encode_jit._cache_size() - enc0 == 0 and _decode_jit._cache_size() - dec0 == 0
  np.testing.assert_array_equal(enc9, outputs["latent_mode"])
  np.testing.assert_array_equal(dec3, outputs["decoded"])
  assert enc5.shape == (1, 2, 6, 8, 16) and dec2.shape == (1, 5, 48, 64, 3)
  # Causality: the first 2 latent frames of the 9-frame clip equal the 5-frame clip's.
  np.testing.assert_allclose(enc5, enc9[:, :2], rtol=0, atol=1e-5)
  np.testing.assert_allclose(dec2, dec3[:, :5], rtol=0, atol=1e-5)


def test_exact_length_path_matches(vae, io, outputs):
  """Under a transformation (training) the exact-length, differentiable scan runs: same values."""
  import jax

  enc = jax.jit(lambda v: vae.encode(v))(jnp.asarray(cl(io["video"])))
  np.testing.assert_allclose(enc, outputs["latent_mode"], rtol=0, atol=1e-5)


def test_tiled_equals_untiled(vae):
  rng = np.random.default_rng(0)
  video = np.clip(0.5 * rng.standard_normal((1, 5, 160, 192, 3)), -1, 1).astype(np.float32)
  z = rng.standard_normal((1, 2, 20, 24, 16)).astype(np.float32)
  # tile 16, overlap 12 -> a 2x3 grid of tiles on the 20x24 latent grid
  enc_ref, dec_ref = vae.encode(video, tile=100), vae.decode(z, tile=100)
  enc, dec = vae.encode(video, tile=16, overlap=12), vae.decode(z, tile=16, overlap=12)
  print(f"tiled vs untiled: encode {rel(enc, enc_ref):.2e}, decode {rel(dec, dec_ref):.2e}")
  assert rel(enc, enc_ref) < 1e-3, rel(enc, enc_ref)
  assert rel(dec, dec_ref) < 1e-3, rel(dec, dec_ref)


def test_bfloat16_is_finite_and_close(io):
  # bf16 convolutions are slow on CPU: one frame each way keeps this test short.
  vae16 = load_vae(FIXTURE, dtype=jnp.bfloat16)
  enc = np.asarray(vae16.encode(cl(io["image"])))
  dec = np.asarray(vae16.decode(cl(io["z"])[:, :1]))
  assert np.isfinite(enc).all() and np.isfinite(dec).all()
  # measured against the float32 reference: 1.3e-2 (encode) and 1.8e-2 (decode) relative error
  assert rel(enc, cl(io["image_latent_mode"])) < 3e-2, rel(enc, cl(io["image_latent_mode"]))
  assert rel(dec, cl(io["decoded_image"])) < 3e-2, rel(dec, cl(io["decoded_image"]))


def test_normalize_roundtrip():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3, 4, 5, 16)), jnp.float32)
  np.testing.assert_allclose(denormalize(normalize(x)), x, atol=1e-5)
  mean = jnp.broadcast_to(jnp.asarray(LATENTS_MEAN), (1, 1, 1, 1, 16))
  np.testing.assert_allclose(normalize(mean), 0.0, atol=1e-6)
  np.testing.assert_allclose(normalize(mean + jnp.asarray(LATENTS_STD)), 1.0, atol=1e-6)


def test_bad_inputs_raise(vae):
  with pytest.raises(ValueError, match="multiples of 8"):
    vae.encode(np.zeros((1, 1, 20, 16, 3), np.float32))
  with pytest.raises(ValueError, match="expects latents"):
    vae.decode(np.zeros((1, 1, 2, 2, 4), np.float32))


# --- loader -------------------------------------------------------------------------------------


def _fixture_tensors():
  with TensorSource(FIXTURE / "vae.safetensors") as src:
    return {k: np.array(src[k]) for k in src}


def test_loader_builds_the_declared_architecture(vae):
  assert isinstance(vae, WanVAE)
  assert vae.cfg.base_dim == 16 and vae.cfg.dim_mult == (1, 2, 2, 2) and vae.cfg.num_res_blocks == 1
  assert vae.cfg.temperal_downsample == (False, True, True)


def test_loader_missing_key(tmp_path):
  sd = _fixture_tensors()
  del sd["decoder.up_blocks.1.resnets.0.conv1.weight"]
  save_dict(tmp_path / "vae.safetensors", sd)
  with pytest.raises(
    ValueError, match=r"missing: decoder\.up_blocks\.1\.resnets\.0\.conv1\.weight"
  ):
    load_vae(tmp_path / "vae.safetensors")


def test_loader_misshaped_and_unexpected_keys(tmp_path):
  sd = _fixture_tensors()
  sd["decoder.conv_out.bias"] = np.zeros((4,), np.float32)
  sd["decoder.extra.weight"] = np.zeros((2,), np.float32)
  save_dict(tmp_path / "vae.safetensors", sd)
  with pytest.raises(ValueError) as err:
    load_vae(tmp_path / "vae.safetensors")
  msg = str(err.value)
  assert "mis-shaped: decoder.conv_out.bias: expected (3,), found (4,)" in msg
  assert "unexpected: decoder.extra.weight" in msg


def test_loader_refuses_pth(tmp_path):
  pth = tmp_path / "Wan2.1_VAE.pth"
  pth.write_bytes(b"not a pickle we would ever open")
  with pytest.raises(ValueError, match="never unpickles"):
    load_vae(pth)


def test_loader_config_json_must_agree(tmp_path):
  save_dict(tmp_path / "diffusion_pytorch_model.safetensors", _fixture_tensors())
  (tmp_path / "config.json").write_text('{"_class_name": "AutoencoderKLWan", "base_dim": 96}')
  with pytest.raises(ValueError, match="base_dim=96"):
    load_vae(tmp_path)


def _to_original(key: str, num_res_blocks: int = 1) -> str:
  """Diffusers key -> original Wan2.1 key (inverse of the loader's mapping; test-only)."""
  res = {
    "norm1.gamma": "residual.0.gamma",
    "conv1.": "residual.2.",
    "norm2.gamma": "residual.3.gamma",
    "conv2.": "residual.6.",
    "conv_shortcut.": "shortcut.",
  }

  def residual(rest):
    for a, b in res.items():
      if rest.startswith(a):
        return b + rest[len(a) :]
    return rest

  top = {"quant_conv": "conv1", "post_quant_conv": "conv2"}
  if m := re.fullmatch(r"(quant_conv|post_quant_conv)\.(.+)", key):
    return f"{top[m[1]]}.{m[2]}"
  if m := re.fullmatch(r"(encoder|decoder)\.conv_in\.(.+)", key):
    return f"{m[1]}.conv1.{m[2]}"
  if m := re.fullmatch(r"(encoder|decoder)\.norm_out\.(.+)", key):
    return f"{m[1]}.head.0.{m[2]}"
  if m := re.fullmatch(r"(encoder|decoder)\.conv_out\.(.+)", key):
    return f"{m[1]}.head.2.{m[2]}"
  if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key):
    return f"{m[1]}.middle.1.{m[2]}"
  if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d)\.(.+)", key):
    return f"{m[1]}.middle.{2 * int(m[2])}.{residual(m[3])}"
  if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", key):
    return f"encoder.downsamples.{m[1]}.{residual(m[2])}"
  per_stage = num_res_blocks + 2
  if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
    return f"decoder.upsamples.{int(m[1]) * per_stage + int(m[2])}.{residual(m[3])}"
  if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.+)", key):
    return f"decoder.upsamples.{int(m[1]) * per_stage + num_res_blocks + 1}.{m[2]}"
  raise AssertionError(key)


def test_loader_original_layout(tmp_path, vae, io):
  sd = {_to_original(k): v for k, v in _fixture_tensors().items()}
  save_dict(tmp_path / "wan_vae.safetensors", sd)
  orig = load_vae(tmp_path / "wan_vae.safetensors")
  z = cl(io["z"])[:, :1]
  np.testing.assert_array_equal(orig.decode(z), vae.decode(z))
  del sd["decoder.upsamples.2.time_conv.weight"]
  save_dict(tmp_path / "broken.safetensors", sd)
  with pytest.raises(ValueError, match="original Wan2.1 layout"):
    load_vae(tmp_path / "broken.safetensors")


def test_state_dict_roundtrip(vae):
  from o2a_jax.convert.vae import vae_state_dict

  sd, ref = vae_state_dict(vae), _fixture_tensors()
  assert sd.keys() == ref.keys()
  for k in ref:
    np.testing.assert_array_equal(sd[k], ref[k], err_msg=k)
