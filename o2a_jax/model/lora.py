"""LoRA adapters on the denoiser: which layers get them, attaching, merging, and the adapter file.

Targets name groups of `Dense` layers by their parameter paths:
  attn  self- and text cross-attention projections of the main blocks (to_q/k/v/out)
  ffn   the main blocks' feed-forward layers
  hrfa  the hybrid reference attention's reference key/value maps (add_k_proj, add_v_proj)
  pose  every dense layer of the pose branch (pose blocks and their zero-initialised outputs)
  ref   every dense layer of the reference extractor's blocks

The adapter file uses the diffusers/PEFT naming ComfyUI and diffusers load for Wan models:
`transformer.<official module>.lora_A.weight` (r, in) and `.lora_B.weight` (out, r), with the
scale alpha / r folded into B (so a loader's default alpha = r gives the trained output).
Attention q/k outputs are stored in the official (interleaved RoPE) channel order, as the base
weights are (`o2a_jax.model.param_names`).
"""

from __future__ import annotations

import dataclasses
import re

import jax
import numpy as np
from flax import nnx

from o2a_jax import sharding
from o2a_jax.layers.linear import Dense, LoRAParam, dense_layers
from o2a_jax.model import param_names as layout

TARGETS: dict[str, str] = {
  "attn": r"^blocks\.attn[12]\.to_(q|k|v|out)$",
  "ffn": r"^blocks\.ffn_(in|out)$",
  "hrfa": r"^blocks\.attn1\.add_[kv]_proj$",
  "pose": r"^(pose_blocks\..+|pose_zero)$",
  "ref": r"^refextractor\.blocks\..+$",
}
DEFAULT_TARGETS = ("attn", "ffn", "hrfa")
ADAPTER_PREFIX = "transformer."


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
  """The `config.lora` section: rank 0 trains as before (no adapters); rank >= 1 freezes every
  base parameter and trains only adapters on `targets`, with the base linears stored as int8
  when `base_int8` (weight-only, `o2a_jax.model.quantize`)."""

  rank: int = 0
  alpha: float = 0.0  # the adapter scale is alpha / rank; 0 means alpha = rank (scale 1)
  targets: str = ",".join(DEFAULT_TARGETS)
  base_int8: bool = False

  def __post_init__(self):
    if self.rank < 0:
      raise ValueError(f"config.lora.rank must be >= 0, got {self.rank}")
    if self.alpha < 0:
      raise ValueError(f"config.lora.alpha must be >= 0, got {self.alpha}")
    parse_targets(self.targets)
    if self.base_int8 and not self.rank:
      raise ValueError("config.lora.base_int8 needs config.lora.rank >= 1 (LoRA training)")

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  def attach(self, model: nnx.Module, *, seed: int = 0) -> list[str]:
    return attach(model, rank=self.rank, alpha=self.alpha or None, targets=self.targets, seed=seed)


def parse_targets(targets) -> tuple[str, ...]:
  """'attn,ffn' or a sequence -> a checked tuple of target group names."""
  names = targets.split(",") if isinstance(targets, str) else list(targets)
  names = [n.strip() for n in names if n.strip()]
  unknown = [n for n in names if n not in TARGETS]
  if unknown or not names:
    raise ValueError(
      f"LoRA targets {','.join(names) or '(none)'}: unknown {unknown or 'empty list'}; choose "
      f"from {', '.join(TARGETS)}"
    )
  return tuple(dict.fromkeys(names))


def target_layers(model: nnx.Module, targets) -> dict[str, Dense]:
  """The `Dense` layers the target groups select (an error if a group selects none)."""
  groups = parse_targets(targets)
  layers = dense_layers(model)
  out = {}
  for g in groups:
    hit = {p: d for p, d in layers.items() if re.match(TARGETS[g], p)}
    if not hit:
      raise ValueError(f"LoRA target {g!r} selects no layer of this model (it has no {g} branch)")
    out.update(hit)
  return dict(sorted(out.items()))


def attach(
  model: nnx.Module, *, rank: int, alpha: float | None = None, targets=DEFAULT_TARGETS,
  seed: int = 0,
) -> list[str]:  # fmt: skip
  """Adds rank-`rank` adapters (scale alpha / rank; alpha defaults to rank) to the target layers,
  in place; the model's outputs do not change until B is trained. Returns the adapted paths."""
  if rank < 1:
    raise ValueError(f"config.lora.rank must be >= 1 to attach adapters, got {rank}")
  scale = (rank if alpha is None else float(alpha)) / rank
  layers = target_layers(model, targets)
  keys = jax.random.split(jax.random.key(seed), len(layers))
  for key, (path, layer) in zip(keys, layers.items()):
    if layer.adapter_rank:
      raise ValueError(f"{path} already has an adapter")
    layer.add_adapter(rank, scale=scale, key=key)
  sharding.place_variables(model, LoRAParam)
  return list(layers)


def adapted_layers(model: nnx.Module) -> dict[str, Dense]:
  return {p: d for p, d in dense_layers(model).items() if d.adapter_rank}


def merge(model: nnx.Module) -> int:
  """Folds every adapter into its kernel and removes it, in place; returns the layers merged."""
  layers = adapted_layers(model)
  for layer in layers.values():
    layer.merge_adapter()
  return len(layers)


def adapter_state_dict(model: nnx.Module) -> dict[str, np.ndarray]:
  """The adapters as float32 tensors in the diffusers/PEFT naming (module docstring)."""
  layers = adapted_layers(model)
  if not layers:
    raise ValueError("the model has no LoRA adapters")
  head_dim = model.cfg.head_dim
  shapes = {f"{p}.kernel": tuple(d.kernel.get_value().shape) for p, d in layers.items()}
  out = {}
  for e in layout.entries(shapes):
    layer = layers[e.path.removesuffix(".kernel")]
    a = np.asarray(layer.lora_a.get_value(), np.float32)
    b = np.asarray(layer.lora_b.get_value(), np.float32) * np.float32(layer.lora_scale)
    if e.layer is not None:
      a, b = a[e.layer], b[e.layer]
    module = e.key.removesuffix(".weight")
    # A maps inputs (no channel permutation); B's outputs carry the kernel's (RoPE) order.
    a_entry = layout.Entry(e.key, e.path, e.layer, "linear", False)
    out[f"{ADAPTER_PREFIX}{module}.lora_A.weight"] = layout.to_official(a_entry, a, head_dim)
    out[f"{ADAPTER_PREFIX}{module}.lora_B.weight"] = layout.to_official(e, b, head_dim)
  return out


def write_adapter_file(model: nnx.Module, path, *, targets: str = "", step: int = 0) -> int:
  """Writes `adapter_state_dict(model)` to one .safetensors file (atomically) with its metadata;
  returns the number of adapted modules."""
  from o2a_jax.io.safetensors import save_dict

  tensors = adapter_state_dict(model)
  rank = max(d.adapter_rank for d in adapted_layers(model).values())
  meta = {
    "format": "diffusers-peft-lora",
    "rank": str(rank),
    "alpha": str(rank),  # the trained alpha / rank scale is folded into lora_B
    "targets": targets,
    "step": str(step),
  }
  save_dict(path, tensors, metadata=meta)
  return len(tensors) // 2


def count(model: nnx.Module) -> int:
  """Adapter parameters of `model` (works on abstract models)."""
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(nnx.state(model, LoRAParam)))
