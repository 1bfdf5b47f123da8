"""Parity of the denoiser with the official PyTorch model (shared/golden/model_tiny), and its
structure: full-size shapes without allocation, scan/remat equivalence, sharding, input checks.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2a_jax import sharding
from o2a_jax.convert import load_official, official_shapes
from o2a_jax.model.shapes import example_inputs

CASES = {
  "plain": (1.0, False),
  "scale0": (0.0, False),
  "scale07": (0.7, False),
  "token_replace": (1.0, True),
}


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def cl(a):
  """PyTorch channels-first -> channels-last."""
  return np.moveaxis(np.asarray(a), 1, -1)


@pytest.fixture(scope="module")
def io(fixtures_dir):
  return dict(np.load(fixtures_dir / "model_tiny" / "io.npz"))


@pytest.fixture(scope="module")
def args(io):
  return tuple(
    jnp.asarray(a)
    for a in (
      cl(io["x"]),
      io["t"],
      io["text"],
      cl(io["image_latents"]),
      cl(io["pose_video"]),
      cl(io["ref_pose"]),
    )
  )


@pytest.fixture(scope="module")
def model(fixtures_dir):
  return load_official(fixtures_dir / "model_tiny")


@pytest.fixture(scope="module")
def outputs(model, args):
  fwd = jax.jit(
    lambda *a, s, tr: model(*a, pose_scale=s, token_replace=tr, return_activations=True),
    static_argnames="tr",
  )
  return {case: fwd(*args, s=s, tr=tr) for case, (s, tr) in CASES.items()}


@pytest.mark.parametrize("case", list(CASES))
def test_output_matches_official_float32(outputs, io, case):
  out, _ = outputs[case]
  assert out.shape == (2, 3, 8, 12, 16)
  assert rel(out, cl(io[f"out.{case}"])) < 1e-5


@pytest.mark.parametrize("case", ["plain", "token_replace"])
def test_activations_match_official_float32(outputs, io, case):
  _, acts = outputs[case]
  a = lambda name: io[f"act.{case}.{name}"]
  pairs = {
    "image_to_cond": (acts["image_to_cond"], cl(a("image_to_cond"))),
    "patch_embedding": (acts["patch_embedding"], cl(a("patch_embedding"))),
    "pose_video": (acts["pose_video"], cl(a("input_hint_block.pose_video"))),
    "ref_pose": (acts["pose_ref"], cl(a("input_hint_block.ref_pose"))),
  }
  for k in range(3):
    pairs[f"refextractor.out.{k}"] = (acts["refextractor"][k], a(f"refextractor.out.{k}"))
    pairs[f"blocks.{k}"] = (acts["blocks"][k], a(f"blocks.{k}"))
  for k in range(2):
    pairs[f"controlnet.blocks.{k}"] = (acts["pose_blocks"][k], a(f"controlnet.blocks.{k}"))
  errors = {name: rel(ours, ref) for name, (ours, ref) in pairs.items()}
  assert max(errors.values()) < 1e-5, errors


def test_bfloat16_mode_matches_float32_fixture(fixtures_dir, io, args):
  model = load_official(fixtures_dir / "model_tiny", dtype=jnp.bfloat16)
  out = jax.jit(lambda *a: model(*a))(*args)
  assert out.dtype == jnp.bfloat16
  assert rel(out.astype(jnp.float32), cl(io["out.plain"])) < 2e-2


def test_pose_scale_zero_ignores_pose_and_per_sample_scale(model, args, outputs):
  """A per-sample scale equals the scalar runs; scale 0 output ignores the pose video."""
  out = jax.jit(lambda *a: model(*a, pose_scale=jnp.array([0.0, 0.7])))(*args)
  np.testing.assert_allclose(out[0], outputs["scale0"][0][0], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out[1], outputs["scale07"][0][1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("preset_name", ["1.3b", "14b"])
def test_official_shapes_full_size(fixtures_dir, preset_name):
  ours = official_shapes(preset_name)
  ref = json.loads((fixtures_dir / f"official_keys_{preset_name}.json").read_text())
  assert ours == {k: tuple(v) for k, v in ref.items()}
  count = sum(int(np.prod(s)) for s in ours.values())
  assert (len(ours), count) == {"1.3b": (1329, 2_210_576_224), "14b": (1513, 18_782_035_296)}[
    preset_name
  ]


def test_scan_loop_and_remat_agree(fixtures_dir, args, outputs):
  """The unrolled loop and the remat'd scan give the scanned model's output."""
  fwd = jax.jit(lambda m, *a: m(*a, token_replace=True))
  for variant in (dict(scan_layers=False), dict(remat="full")):
    other = load_official(fixtures_dir / "model_tiny", **variant)
    np.testing.assert_allclose(fwd(other, *args), outputs["token_replace"][0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_remat_gradients_equal(fixtures_dir, args):
  from flax import nnx

  def grads(model):
    loss = nnx.jit(nnx.grad(lambda m: jnp.mean(m(*args) ** 2)))
    return jax.tree.leaves(nnx.state(loss(model), nnx.Param))

  ref = grads(load_official(fixtures_dir / "model_tiny"))
  got = grads(load_official(fixtures_dir / "model_tiny", remat="full"))
  for a, b in zip(got, ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_sharded_matches_single_device(fixtures_dir, args, outputs):
  assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
  mesh = sharding.make_mesh((2, 2, 1, 2))
  with jax.set_mesh(mesh):
    model = load_official(fixtures_dir / "model_tiny")
    kernel = model.blocks.attn1.to_q.kernel.get_value()
    assert kernel.sharding.spec == jax.P(None, "fsdp", "tensor")
    out = jax.jit(lambda m, *a: m(*a))(model, *args)
  np.testing.assert_allclose(out, outputs["plain"][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
  "index, shape, match",
  [
    (0, (1, 2, 4, 6, 8), "latents"),
    (1, (2,), "timestep"),
    (3, (1, 1, 4, 6, 16), "ref_latents"),
    (4, (1, 4, 32, 48, 3), "pose_video"),
    (4, (1, 5, 30, 48, 3), "pose_video"),
    (5, (1, 1, 32, 40, 3), "ref_pose"),
  ],
)
def test_bad_input_shapes_are_named(model, index, shape, match):
  x = list(example_inputs(model.cfg))
  x[index] = jnp.zeros(shape)
  with pytest.raises(ValueError, match=match):
    model(*x)
