"""LoRA adapters on the denoiser (`o2a_jax.model.lora`): a zero adapter changes nothing, merging
equals the adapted model, the adapter file reproduces the merged official weights, and the
official parameter walk never sees adapters."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from o2a_jax.convert import load_official, official_state_dict, save_official
from o2a_jax.layers.linear import LoRAParam
from o2a_jax.model import lora
from o2a_jax.model.config import preset
from o2a_jax.model.shapes import example_inputs


@pytest.fixture(scope="module")
def args():
  return example_inputs(preset("tiny"))  # the golden tiny model's configuration


ALL_TARGETS = ("attn", "ffn", "hrfa", "pose", "ref")
# One jitted forward for the module: models of one structure share its compiled program.
_FORWARD = jax.jit(lambda m, *a: m(*a, token_replace=True))


def _run(model, args):
  return np.asarray(_FORWARD(model, *args))


def _train_b(model, seed=3, std=0.02):
  """Stands in for training: random B factors (A keeps its init)."""
  layers = lora.adapted_layers(model)
  keys = jax.random.split(jax.random.key(seed), len(layers))
  for key, layer in zip(keys, layers.values()):
    b = layer.lora_b.get_value()
    layer.lora_b.set_value(std * jax.random.normal(key, b.shape, b.dtype))


def test_zero_adapter_leaves_outputs_bit_identical(fixtures_dir, args):
  model = load_official(fixtures_dir / "model_tiny")
  base = _run(model, args)
  paths = lora.attach(model, rank=4, alpha=8, targets=ALL_TARGETS)
  assert "blocks.attn1.to_q" in paths and "blocks.attn1.add_k_proj" in paths
  assert "pose_zero" in paths and "refextractor.blocks.ffn_in" in paths
  assert np.array_equal(_run(model, args), base)
  # The official walk sees the same parameters as before; adapters are their own type.
  fresh = load_official(fixtures_dir / "model_tiny")
  names = lambda m: {p for p, _ in nnx.state(m, nnx.Param).flat_state()}
  assert names(model) == names(fresh)
  assert lora.count(model) == sum(v.size for v in jax.tree.leaves(nnx.state(model, LoRAParam)))
  assert lora.count(model) > 0 and not jax.tree.leaves(nnx.state(fresh, LoRAParam))


def test_trainable_state_is_what_the_rank_implies(fixtures_dir):
  model = load_official(fixtures_dir / "model_tiny")
  paths = lora.attach(model, rank=4, targets="attn")
  cfg = model.cfg
  # 8 projections (D x D) per main block: A (D x 4) + B (4 x D) each.
  assert len(paths) == 8
  assert lora.count(model) == cfg.num_layers * 8 * (4 * cfg.dim + 4 * cfg.dim)


def test_merge_equals_adapted_and_adapter_file_rebuilds_the_merged_weights(
  fixtures_dir, args, tmp_path
):
  model = load_official(fixtures_dir / "model_tiny")
  base_sd = official_state_dict(model)
  lora.attach(model, rank=4, alpha=8, targets=ALL_TARGETS)  # the structure compiled above
  _train_b(model)
  adapted = _run(model, args)
  adapter = lora.adapter_state_dict(model)
  base_out = _run(load_official(fixtures_dir / "model_tiny"), args)
  assert np.abs(adapted - base_out).max() > 1e-3  # the adapters do something
  assert lora.merge(model) > 0 and not lora.adapted_layers(model)
  merged = _run(model, args)
  err = np.abs(merged - adapted).max() / np.abs(adapted).max()
  assert err < 1e-5, err
  # The merged model exports in the official layout and reloads to the same outputs.
  save_official(model, tmp_path / "merged")
  np.testing.assert_array_equal(_run(load_official(tmp_path / "merged"), args), merged)
  # Base + B A per the adapter file = the merged official tensors (names, layout, RoPE order).
  merged_sd = official_state_dict(model)
  modules = {k.removesuffix(".lora_A.weight") for k in adapter if k.endswith(".lora_A.weight")}
  assert len(modules) == len(adapter) // 2
  for m in modules:
    key = m.removeprefix(lora.ADAPTER_PREFIX) + ".weight"
    a, b = adapter[m + ".lora_A.weight"], adapter[m + ".lora_B.weight"]
    assert a.shape[0] == b.shape[1] == 4
    np.testing.assert_allclose(base_sd[key] + b @ a, merged_sd[key], rtol=0, atol=1e-6)
  untouched = set(base_sd) - {m.removeprefix(lora.ADAPTER_PREFIX) + ".weight" for m in modules}
  assert all(np.array_equal(base_sd[k], merged_sd[k]) for k in untouched)


def test_bad_targets_are_named(fixtures_dir):
  model = load_official(fixtures_dir / "model_tiny")
  with pytest.raises(ValueError, match="unknown.*'mlp'.*choose from attn"):
    lora.attach(model, rank=4, targets="attn,mlp")
  with pytest.raises(ValueError, match="rank must be >= 1"):
    lora.attach(model, rank=0)
  lora.attach(model, rank=2, targets="attn")
  with pytest.raises(ValueError, match="already has an adapter"):
    lora.attach(model, rank=2, targets="attn")
