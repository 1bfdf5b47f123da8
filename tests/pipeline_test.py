"""The sampling chunk against the official pipeline (shared/golden/pipeline_tiny): reference and
mask encoding, three-, two- and one-pass guidance, TokenReplace context, decoding; plus the
scheduler's sigmas and batched guidance."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from o2a_jax.convert import load_official, load_vae
from o2a_jax.sampling import guidance
from o2a_jax.sampling.chunk import generate_chunk
from o2a_jax.sampling.schedule import sigmas

# Official flow-matching scheduler: the 30 sigmas of the released sampler (printed to 5 decimals
# there).
SPEC_SIGMAS = [
  1.0, 0.99496, 0.98961, 0.98391, 0.97783, 0.97133, 0.96438, 0.95690, 0.94886, 0.94017,
  0.93076, 0.92053, 0.90938, 0.89717, 0.88374, 0.86891, 0.85243, 0.83402, 0.81332, 0.78987,
  0.76310, 0.73222, 0.69623, 0.65373, 0.60280, 0.54063, 0.46306, 0.36354, 0.23124, 0.04676, 0.0,
]  # fmt: skip


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def data(fixtures_dir):
  io = dict(np.load(fixtures_dir / "pipeline_tiny" / "io.npz"))
  cases = json.loads((fixtures_dir / "pipeline_tiny" / "cases.json").read_text())
  return io, cases


@pytest.fixture(scope="module")
def model(fixtures_dir):
  return load_official(fixtures_dir / "model_tiny")


@pytest.fixture(scope="module")
def vae(fixtures_dir):
  return load_vae(fixtures_dir / "vae_tiny")


def _run(model, vae, io, run, **kw):
  cl = lambda a: np.moveaxis(a[0], 0, -1)
  key = run["key"]
  return generate_chunk(
    model,
    vae,
    io["image"],
    io["mask"],
    cl(io["pose_video"]),
    cl(io["ref_pose"]),
    io["text"][0],
    io["negative_text"][0],
    np.moveaxis(io[f"{key}.noise"][0], 0, -1),
    steps=run["steps"],
    shift=7.0,
    image_guidance=run["image_guidance"],
    pose_guidance=run["pose_guidance"],
    prev_frames=io[f"{key}.prev_frames"] if run["token_replace"] else None,
    **kw,
  )


@pytest.mark.parametrize("key", ["three_pass", "two_pass", "one_pass", "token_replace"])
def test_generate_chunk_matches_official_pipeline(model, vae, data, key):
  io, cases = data
  run = next(r for r in cases["runs"] if r["key"] == key)
  out = _run(model, vae, io, run)
  assert out.shape == (9, 64, 96, 3) and out.dtype == np.float32
  assert rel(out, np.moveaxis(io[f"{key}.video"], 0, -1)) < 1e-4


def test_sigmas_equal_the_official_scheduler(fixtures_dir):
  ref = json.loads((fixtures_dir / "sigmas_diffusers.json").read_text())
  for case in ref["cases"]:
    np.testing.assert_allclose(
      sigmas(case["steps"], case["shift"]), case["sigmas"], rtol=0, atol=1e-6
    )
  # The spec prints 5 decimals, truncated (0.78987515 appears as 0.78987): compare to 1e-5.
  np.testing.assert_allclose(sigmas(30, 7.0), SPEC_SIGMAS, rtol=0, atol=1e-5)
  with pytest.raises(ValueError, match="steps"):
    sigmas(0)


def test_batched_guidance_equals_sequential_calls(model, data):
  io, _ = data
  k = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(k[0], (1, 3, 8, 12, 16))
  t = jnp.full((1,), 731.0)
  ref = jax.random.normal(k[1], (1, 1, 8, 12, 32))
  black = jax.random.normal(k[2], (1, 1, 8, 12, 32))
  cl = lambda a: jnp.asarray(np.moveaxis(a, 1, -1))
  pose, rpose = cl(io["pose_video"]), cl(io["ref_pose"])
  text, neg = jnp.asarray(io["text"]), jnp.asarray(io["negative_text"])
  fwd = jax.jit(lambda *a, s: model(*a, pose_scale=s))
  c = fwd(x, t, text, ref, pose, rpose, s=1.0)
  u = fwd(x, t, neg, black, -jnp.ones_like(pose), -jnp.ones_like(rpose), s=0.0)
  r = fwd(x, t, text, black, pose, rpose, s=1.0)
  want = u + 1.5 * (r - u) + 2.5 * (c - r)
  b_ref, b_pose, b_rpose, b_text, scales = guidance.pass_inputs(
    3, ref, black, pose, rpose, text, neg, 1.0
  )
  eps = fwd(
    jnp.concatenate([x] * 3), jnp.concatenate([t] * 3), b_text, b_ref, b_pose, b_rpose, s=scales
  )
  for batched, sequential in zip(jnp.split(eps, 3), (c, u, r)):
    assert rel(batched, sequential) < 1e-6
  assert rel(guidance.combine(eps, 3, 2.5, 1.5), want) < 1e-6


def test_runs_are_deterministic_and_bad_inputs_are_named(model, vae, data):
  io, cases = data
  run = dict(cases["runs"][2], steps=1)
  a, b = _run(model, vae, io, run), _run(model, vae, io, run)
  assert np.array_equal(a, b)
  cl = lambda x: np.moveaxis(x[0], 0, -1)
  base = dict(
    image=io["image"],
    mask=io["mask"],
    pose_video=cl(io["pose_video"]),
    ref_pose=cl(io["ref_pose"]),
    text_embeds=io["text"][0],
    negative_text_embeds=io["negative_text"][0],
    noise=np.moveaxis(io["one_pass.noise"][0], 0, -1),
  )
  bad = {
    "mask": ("mask", io["mask"] * 3),
    "pose_video": ("pose_video", cl(io["pose_video"])[:8]),
    "noise": ("noise", np.zeros((2, 8, 12, 16), np.float32)),
    "image": ("image", io["image"].astype(np.float32)),
  }
  for field, (match, value) in bad.items():
    with pytest.raises(ValueError, match=match):
      generate_chunk(model, vae, **{**base, field: value}, steps=1)
  with pytest.raises(ValueError, match="prev_frames"):
    generate_chunk(model, vae, **base, steps=1, prev_frames=io["token_replace.prev_frames"][:4])
