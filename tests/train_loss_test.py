"""Parity of the flow-matching training loss and its gradients with the official code
(tests/fixtures/loss_tiny: `FlowMatching.get_loss_wanx` on the model_tiny denoiser, float32).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from o2a_jax.convert import load_official
from o2a_jax.model import param_names as layout
from o2a_jax.train import loss as L
from o2a_jax.train import trainable

CASES = ("plain", "token_replace", "pose_dropped")


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def cl(a):
  """PyTorch channels-first -> channels-last."""
  return np.moveaxis(np.asarray(a), 1, -1)


@pytest.fixture(scope="module")
def fixture(fixtures_dir):
  io = dict(np.load(fixtures_dir / "loss_tiny" / "io.npz"))
  meta = json.loads((fixtures_dir / "loss_tiny" / "cases.json").read_text())
  return io, meta


@pytest.fixture(scope="module")
def results(fixtures_dir, fixture):
  """Loss and official-layout gradients of every case, from one jitted value_and_grad."""
  io, meta = fixture
  model = load_official(fixtures_dir / "model_tiny")
  graphdef, params, frozen = trainable.split_params(model, 2)
  cond = [jnp.asarray(a) for a in (io["text"], cl(io["image_latents"]))]
  cond += [jnp.asarray(cl(io[k])) for k in ("pose_video", "ref_pose")]

  @jax.jit
  def loss_and_grad(params, x0, noise, u, face, ocr, scale, tr):
    def f(params):
      m = nnx.merge(graphdef, params, frozen)
      apply = lambda x, t, tr_: m(x, t, *cond, pose_scale=scale, token_replace=tr_)
      return L.flow_matching_loss(
        apply, x0, noise, u, face, ocr, token_replace=tr, face_weight=meta["face_weight"]
      )[0]

    return jax.value_and_grad(f)(params)

  by_path = {".".join(map(str, p)): v.get_value() for p, v in params.flat_state()}
  shapes = {p: tuple(a.shape) for p, a in by_path.items()}
  out = {}
  for case in meta["cases"]:
    name, b = case["case"], io["plain.x0"].shape[0]
    face = io[f"{name}.face_mask"][:, 0]  # (B,1,T,H,W) -> (B,T,H,W)
    ocr = io[f"{name}.ocr_mask"][:, 0]
    loss, grads = loss_and_grad(
      params,
      jnp.asarray(cl(io[f"{name}.x0"])),
      jnp.asarray(cl(io[f"{name}.noise"])),
      jnp.asarray(io[f"{name}.u"], jnp.float32),
      jnp.asarray(face),
      jnp.asarray(ocr),
      jnp.full((b,), case["pose_scale"], jnp.float32),
      jnp.full((b,), case["token_replace"]),
    )
    flat = {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in grads.flat_state()}
    official = {}
    for e in layout.entries(shapes):
      a = flat[e.path] if e.layer is None else flat[e.path][e.layer]
      official[e.key] = layout.to_official(e, a, model.cfg.head_dim)
    out[name] = (float(loss), official)
  return out


def test_timestep_rule_matches_fixture_float64(fixture):
  """floor(1000 u) in float32 gives the fixture's float64 indices for its draws."""
  io, _ = fixture
  for case in CASES:
    u = io[f"{case}.u"]
    t, sigma = L.timesteps_from_u(jnp.asarray(u, jnp.float32))
    np.testing.assert_array_equal(np.asarray(t), 1000 - np.floor(u * 1000))
    np.testing.assert_allclose(np.asarray(sigma), (1000 - np.floor(u * 1000)) / 1000, rtol=1e-7)


@pytest.mark.parametrize("case", CASES)
def test_loss_matches_official(results, fixture, case):
  io, _ = fixture
  loss, _ = results[case]
  assert abs(loss - float(io[f"{case}.loss"])) / float(io[f"{case}.loss"]) < 1e-5


def test_trainable_set_is_fixtures_plus_pose_zero(results, fixture):
  """The fixture lists 193 stage-2/3 gradients; the official substring rule ('controlnet' in
  the key) also trains the 4 `controlnet_zero` tensors, which the fixture does not store."""
  io, _ = fixture
  ref = {k.split(".", 2)[2] for k in io if k.startswith("gradnorm.plain.")}
  ours = set(results["plain"][1])
  assert len(ref) == 193
  assert ours - ref == {f"controlnet_zero.{i}.{p}" for i in range(2) for p in ("weight", "bias")}
  assert ref <= ours


def test_full_gradients_match_official_plain(results, fixture):
  io, _ = fixture
  grads = results["plain"][1]
  keys = [k[len("grad.plain.") :] for k in io if k.startswith("grad.plain.")]
  assert len(keys) == 193
  errors = {k: rel(grads[k], io[f"grad.plain.{k}"]) for k in keys}
  worst = max(errors, key=errors.get)
  assert errors[worst] < 1e-4, (worst, errors[worst])


@pytest.mark.parametrize("case", CASES)
def test_gradient_norms_match_official(results, fixture, case):
  io, _ = fixture
  grads = results[case][1]
  prefix = f"gradnorm.{case}."
  errors = {}
  for k in (k for k in io if k.startswith(prefix)):
    key, ref = k[len(prefix) :], float(io[k])
    ours = float(np.linalg.norm(grads[key].astype(np.float64)))
    if ref == 0.0:  # pose branch with pose scale 0: exactly no gradient
      assert ours == 0.0, key
    else:
      errors[key] = abs(ours - ref) / ref
  worst = max(errors, key=errors.get)
  assert errors[worst] < 1e-4, (worst, errors[worst])


def test_nearest_resize_is_pytorch_nearest():
  """src = floor(dst * in / out) (float32 scale), as F.interpolate(mode='nearest')."""
  np.testing.assert_array_equal(L.nearest_indices(64, 8), np.arange(8) * 8)
  np.testing.assert_array_equal(L.nearest_indices(10, 4), [0, 2, 5, 7])
  np.testing.assert_array_equal(L.nearest_indices(4, 8), [0, 0, 1, 1, 2, 2, 3, 3])
  mask = jnp.arange(2 * 3 * 10 * 6, dtype=jnp.float32).reshape(2, 3, 10, 6)
  out = L.resize_mask_nearest(mask, 4, 3)
  np.testing.assert_array_equal(out, np.asarray(mask)[:, :, [0, 2, 5, 7]][:, :, :, [0, 2, 4]])


def test_masks_token_replace_and_masked_mean():
  """A fake model with known error: plain mean counts masked elements, masked mean does not;
  TokenReplace frames get the clean latents and leave the loss; face weight scales its region."""
  b, t, h, w, c = 2, 3, 2, 2, 4
  x0 = jnp.ones((b, t, h, w, c))
  noise = jnp.zeros_like(x0)
  u = jnp.array([0.25, 0.75])
  seen = {}

  def apply(x, tt, tr):
    seen["x"], seen["t"] = x, tt
    return jnp.zeros_like(x)  # error = target = -x0 = -1 everywhere: se = 1

  face = jnp.zeros((b, t, 16, 16)).at[:, :, :8, :8].set(1.0)  # one latent pixel of four
  ocr = jnp.ones((b, t, 16, 16)).at[:, 2].set(0.0)  # last frame excluded
  tr = jnp.array([True, False])
  loss, parts = L.flow_matching_loss(apply, x0, noise, u, face, ocr, token_replace=tr)
  np.testing.assert_array_equal(seen["t"], [750.0, 250.0])
  np.testing.assert_allclose(seen["x"][0, :2], 1.0)  # clean context frames
  np.testing.assert_allclose(seen["x"][0, 2], 0.25, rtol=1e-6)  # (1 - 0.75) x0
  np.testing.assert_allclose(seen["x"][1], 0.75, rtol=1e-6)
  # Unmasked latent pixels: sample 0 frame none (0,1 TokenReplace, 2 ocr), sample 1 frames 0,1.
  # Per frame 4 pixels, one in the face (weight 3): sum = 3 + 3 * 1 = 6 per frame, times c.
  n = b * t * h * w * c
  np.testing.assert_allclose(loss, 2 * 6 * c / n, rtol=1e-6)
  np.testing.assert_allclose(parts["loss_face"], 2 * 2 * c / n, rtol=1e-6)
  masked, _ = L.flow_matching_loss(
    apply, x0, noise, u, face, ocr, token_replace=tr, masked_mean=True
  )
  np.testing.assert_allclose(masked, 2 * 6 * c / (2 * h * w * c), rtol=1e-6)
