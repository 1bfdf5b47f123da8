"""The stage 1/2/3 trainable parameter sets (official three training stages), by the official
substring rules.

The official trainers mark a parameter trainable when any of the stage's `--training_modules`
substrings occurs in its `named_parameters()` name, and additionally the whole reference
extractor (and, in stages 2/3, the whole pose branch) (T1:601-602, T2:588-605). Here the same
rules run on the official key names of our parameters (`o2a_jax.model.param_names`), so
the sets are the spec's by construction. A stacked parameter (one array for all layers of a
block stack) must be trainable in every layer or in none; anything else raises.
"""

from __future__ import annotations

import jax
from flax import nnx

from o2a_jax.layers.linear import LoRAParam
from o2a_jax.model import param_names as layout

# `--training_modules` of the shell scripts plus the modules the trainers add whole.
STAGE_MODULES: dict[int, tuple[str, ...]] = {
  1: ("add_k_proj", "add_v_proj", "norm_added_k", "attn1.to_out", "refextractor"),
  2: (
    "attn1",
    "patch_embedding",
    "input_hint_block",
    "controlnet",
    "image_to_cond",
    "refextractor",
  ),
}
STAGE_MODULES[3] = STAGE_MODULES[2]


def check_stage(stage: int) -> int:
  if stage not in STAGE_MODULES:
    raise ValueError(f"unknown training stage {stage!r}; choose 1, 2 or 3")
  return stage


def is_trainable_key(key: str, stage: int) -> bool:
  """The official rule on one official key name."""
  return any(m in key for m in STAGE_MODULES[check_stage(stage)])


def _param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  return {
    ".".join(map(str, path)): tuple(v.get_value().shape)
    for path, v in nnx.state(model, nnx.Param).flat_state()
  }


def trainable_paths(model: nnx.Module, stage: int) -> frozenset[str]:
  """Dotted parameter paths of `model` that are trainable in `stage`."""
  check_stage(stage)
  by_path: dict[str, list[bool]] = {}
  for e in layout.entries(_param_shapes(model)):
    by_path.setdefault(e.path, []).append(is_trainable_key(e.key, stage))
  mixed = sorted(p for p, flags in by_path.items() if len(set(flags)) > 1)
  if mixed:
    raise ValueError(f"stage {stage}: stacked parameters trainable in only some layers: {mixed}")
  return frozenset(p for p, flags in by_path.items() if flags[0])


def trainable_filter(model: nnx.Module, stage: int):
  """An NNX filter `(path, value) -> bool` selecting the stage's trainable `nnx.Param`s."""
  paths = trainable_paths(model, stage)

  def select(path, value) -> bool:
    return isinstance(value, nnx.Param) and ".".join(map(str, path)) in paths

  return select


def trainable_keys(model: nnx.Module, stage: int) -> list[str]:
  """Official key names of the stage's trainable parameters (sorted)."""
  return sorted(
    e.key for e in layout.entries(_param_shapes(model)) if is_trainable_key(e.key, stage)
  )


def count(model: nnx.Module, stage: int) -> tuple[int, int]:
  """(trainable, total) parameter counts of `model` in `stage` (works on abstract models)."""
  paths = trainable_paths(model, stage)
  n_train = n_all = 0
  for path, v in nnx.state(model, nnx.Param).flat_state():
    n = int(jax.numpy.size(v.get_value())) if hasattr(v.get_value(), "size") else 0
    n_all += n
    if ".".join(map(str, path)) in paths:
      n_train += n
  return n_train, n_all


SETS = ("official", "all", "lora")


def split_params(model: nnx.Module, stage: int, which: str = "official"):
  """(graphdef, trainable State, frozen State) of `model`: every variable is in exactly one.

  `which`: `official` (the stage's set, official three training stages), `all` (every parameter: a
  model without a pretrained backbone, such as the puppet toy, whose first stage stands in for the
  base model's pretraining) or `lora` (only the LoRA adapters attached to the model).
  """
  if which == "all":
    check_stage(stage)
    return nnx.split(model, nnx.Param, ...)
  if which == "lora":
    check_stage(stage)
    if not jax.tree.leaves(nnx.state(model, LoRAParam)):
      raise ValueError("trainable set 'lora' but the model has no adapters (config.lora.rank)")
    return nnx.split(model, LoRAParam, ...)
  if which != "official":
    raise ValueError(f"config.train.trainable {which!r} is not one of {SETS}")
  return nnx.split(model, trainable_filter(model, stage), ...)
