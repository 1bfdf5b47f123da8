"""Sharded sampling on the simulated 8-device CPU mesh equals single-device sampling.

Mesh (data, fsdp, context, tensor) = (1, 1, 4, 2): heads and MLP parameters sharded over
`tensor`, tokens over `context` through the context-parallel attention wrappers; the VAE is
replicated. The case is the golden pipeline_tiny TokenReplace run (three-pass guidance).
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from kernels.attention import context_parallel
from o2a_jax import sharding
from o2a_jax.convert import load_official, load_vae
from o2a_jax.inference import sharded
from o2a_jax.sampling.chunk import generate_chunk


def rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.slow  # ~60 s of compilation for the 8-device program on 2 cores
@pytest.mark.parametrize("shape,strategy", [((1, 1, 4, 2), "allgather")])
def test_sharded_generate_chunk_equals_single_device(fixtures_dir, shape, strategy):
  io = dict(np.load(fixtures_dir / "pipeline_tiny" / "io.npz"))
  run = next(
    r
    for r in json.loads((fixtures_dir / "pipeline_tiny" / "cases.json").read_text())["runs"]
    if r["key"] == "token_replace"
  )
  cl = lambda a: np.moveaxis(a[0], 0, -1)
  args = (
    io["image"], io["mask"], cl(io["pose_video"]), cl(io["ref_pose"]), io["text"][0],
    io["negative_text"][0], np.moveaxis(io["token_replace.noise"][0], 0, -1),
  )  # fmt: skip
  kw = dict(steps=run["steps"], prev_frames=io["token_replace.prev_frames"])
  single = generate_chunk(
    load_official(fixtures_dir / "model_tiny"), load_vae(fixtures_dir / "vae_tiny"), *args, **kw
  )

  mesh = sharding.make_mesh(shape)
  impl = context_parallel.register_context_parallel("xla", strategy)
  with jax.set_mesh(mesh):
    model = load_official(fixtures_dir / "model_tiny", attn_impl=impl)
    vae = sharded.replicate(load_vae(fixtures_dir / "vae_tiny"), mesh)
    sharded.check_sampling_mesh(mesh, passes=3, num_heads=2, tokens_per_frame=24)
    out = generate_chunk(model, vae, *args, **kw)
  # The parameters really are split: a q projection kernel is sharded over `tensor`.
  q = model.blocks.attn1.to_q.kernel.get_value()
  assert len(q.sharding.device_set) == 8 and not q.sharding.is_fully_replicated
  print(f"sharded vs single device: {rel(out, single):.2e}")
  assert rel(out, single) < 1e-5, rel(out, single)
  assert rel(out, np.moveaxis(io["token_replace.video"], 0, -1)) < 1e-4


def test_sampling_mesh_errors():
  mesh = sharding.make_mesh((1, 2, 4, 1))
  with pytest.raises(ValueError, match="data\\*fsdp = 2 must divide the 3 guidance passes"):
    sharded.check_sampling_mesh(mesh, passes=3, num_heads=2, tokens_per_frame=24)
  mesh = sharding.make_mesh((1, 1, 8, 1))
  with pytest.raises(ValueError, match="tokens per latent frame"):
    sharded.check_sampling_mesh(mesh, passes=3, num_heads=2, tokens_per_frame=12)
  with pytest.raises(ValueError, match="1,1,4,2"):
    sharded.parse_mesh("4x2")
  assert sharded.parse_mesh("1,1,4,2") == (1, 1, 4, 2)
  with pytest.raises(ValueError, match="unknown context-parallel strategy"):
    context_parallel.register_context_parallel("xla", "ring")
