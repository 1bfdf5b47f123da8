"""LoRA training end to end: `o2a train` with config.lora on a frozen base, adapter-only
checkpoints that resume, `o2a convert run` exports (merged official model, adapter file), and on
the puppet toy a LoRA run that lowers the loss."""

from __future__ import annotations

import dataclasses
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from o2a_jax import sharding
from o2a_jax.checkpoint import save_native
from o2a_jax.cli import main
from o2a_jax.config_lib import load_config_file
from o2a_jax.io.safetensors import TensorSource
from o2a_jax.layers.linear import LoRAParam
from o2a_jax.model import lora
from o2a_jax.train import export, trainer
from o2a_jax.train import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "o2a.py"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  """A LoRA run on a saved random base (small model, synthetic data, one device): 2 steps with a
  checkpoint, then resumed from it to step 4 (one compiled step serves both calls)."""
  tmp = tmp_path_factory.mktemp("lora")
  c = load_config_file(CONFIG, "model=tiny,small,stage=2")
  c.train.mesh_shape = (1, 1, 1, 1)  # one device: a quicker compile than the 8-device mesh
  base = trainer.build_model(c)
  save_native(base, tmp / "base")
  c.init.checkpoint, c.init.format = str(tmp / "base"), "native"
  c.lora.rank, c.lora.alpha, c.lora.targets = 4, 8.0, "attn,ffn,hrfa,pose"
  c.optim.lr, c.optim.warmup_steps = 1e-2, 0
  c.train.steps, c.train.ckpt_every, c.train.async_checkpoint = 2, 2, False
  s = trainer.setup(c, mesh=sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1]))
  template = jax.tree.map(lambda x: x.copy(), s.state)  # the run donates s.state
  first = trainer.train(c, tmp / "run", progress=False, built=s)
  c.train.steps = 4
  resumed = trainer.train(
    c, tmp / "run", progress=False, built=dataclasses.replace(s, state=template)
  )
  return tmp, c, first, resumed


def test_lora_run_trains_only_adapters_and_checkpoints_them(lora_run):
  tmp, c, _, result = lora_run
  assert result.step == 4 and result.reason == "done"
  state = result.state
  # The trainable state is the adapters: A and B per adapted layer, nothing else.
  is_var = lambda x: isinstance(x, nnx.Variable)
  assert {type(v) for v in jax.tree.leaves(state.params, is_leaf=is_var)} == {LoRAParam}
  n = sum(x.size for x in jax.tree.leaves(state.params))
  model = step_lib.merge_model(result.graphs, state)
  assert n == lora.count(model)
  # The base moved not at all; the adapters did.
  base = trainer.build_model(c)
  same = jax.tree.map(
    lambda a, b: bool(np.array_equal(np.asarray(a), np.asarray(b))),
    nnx.state(base, nnx.Param),
    nnx.state(model, nnx.Param),
  )
  assert all(jax.tree.leaves(same))
  assert any(np.abs(np.asarray(v)).max() > 0 for v in jax.tree.leaves(nnx.state(model, LoRAParam)))
  # Checkpoints hold the adapters and their optimizer state, not the base, VAE or text.
  stored = ocp.StandardCheckpointer().metadata(tmp / "run" / "checkpoints" / "4" / "state")
  stored = stored.item_metadata
  assert "params" in stored and "opt_state" in stored
  assert not {"frozen", "vae", "text"} & set(stored.keys())
  sizes = [int(np.prod(x.shape)) for x in jax.tree.leaves(dict(stored["params"]))]
  assert sum(sizes) == n


def test_lora_run_resumes_from_its_adapter_checkpoint(lora_run):
  _, _, first, resumed = lora_run
  assert first.step == 2 and resumed.step == 4
  # The second call restored step 2 and ran steps 3 and 4 only.
  assert [h["step"] for h in resumed.history] == [3, 4]


def test_convert_run_exports_merged_and_adapter(lora_run, capsys):
  from o2a_jax.convert import official_state_dict

  tmp, c, _, last = lora_run
  one = sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1])
  model, _, step = export.load_run(tmp / "run", step=4, mesh=one)
  # The restored adapters are the run's step-4 adapters, bit for bit.
  restored = jax.tree.leaves(nnx.state(model, LoRAParam))
  trained = jax.tree.leaves(last.state.params)
  assert len(restored) == len(trained) > 0
  assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(restored, trained))
  # The merged export is the in-memory merge (lora_test checks merge = adapted outputs).
  assert main(["convert", "run", str(tmp / "run"), str(tmp / "merged"), "--step", "4"]) == 0
  lora.merge(model)
  want = official_state_dict(model)
  with TensorSource(tmp / "merged") as src:
    assert set(src) == set(want)
    # merged on 8 devices by the command, on one here: equal up to float rounding
    for k in want:
      np.testing.assert_allclose(src[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)
  out = tmp / "adapter.safetensors"
  assert main(["convert", "run", str(tmp / "run"), str(out), "--to", "adapter", "--step", "4"]) == 0
  with TensorSource(out) as src:
    keys = list(src)
    assert src["transformer.blocks.0.attn1.to_q.lora_A.weight"].shape == (4, model.cfg.dim)
  assert keys and all(k.startswith("transformer.") for k in keys)
  assert "transformer.controlnet.blocks.0.attn1.to_q.lora_B.weight" in keys
  assert "adapted modules" in capsys.readouterr().out
  # The base is needed again (checkpoints hold adapters only): a missing one is named.
  bad = ["convert", "run", str(tmp / "run"), str(tmp / "m2"), "--base", str(tmp / "nope")]
  assert main(bad) == 2
  assert "give --base" in capsys.readouterr().err and not (tmp / "m2").exists()


@pytest.mark.slow  # ~30 s: the tiny model's train step compiles once more
def test_lora_on_the_puppet_toy_lowers_the_loss(tmp_path):
  """The shipped puppet model as the frozen base: on one batch with the step's random draws held
  fixed, rank-8 adapters lower the loss."""
  import data_pipeline
  from o2a_jax.puppet import evaluate as E
  from o2a_jax.puppet.world import WorldConfig, write_world

  world = tmp_path / "world"
  write_world(
    WorldConfig(seed=5, videos=3, images=1, heldout=1, height=32, width=32, frames=40),
    world,
    progress=False,
  )
  data = tmp_path / "data"
  assert main(["data", "build", "official", str(world / "train.csv"), str(data), "--quiet"]) == 0
  c = load_config_file(CONFIG, "model=tiny,puppet,stage=2")
  c.data.source = str(data)
  c.data.bucket_scale = 0.0625  # the 512 bucket -> 32x32 (the world's size)
  c.data.global_batch = 2
  c.init.checkpoint = str(E.MODEL_DIR)
  c.lora.rank, c.lora.targets = 8, "attn,ffn,hrfa,pose"
  c.optim.lr, c.optim.warmup_steps = 1e-3, 0
  it = data_pipeline.train_iterator(c.data)
  batch = next(b for b in (next(it) for _ in range(20)) if b["video"].shape[1] > 1)
  s = trainer.setup(c, mesh=sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1]))
  state, rng = s.state, np.asarray(s.state.rng)
  losses = []
  for _ in range(6):
    state, m = s.step_fn(state.replace(rng=jax.numpy.asarray(rng)), batch)
    losses.append(float(jax.device_get(m["loss"])))
  assert all(np.isfinite(losses)), losses
  print("puppet LoRA losses", [round(v, 4) for v in losses])
  assert losses[-1] < 0.95 * losses[0], losses
