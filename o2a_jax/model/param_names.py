"""The map between the denoiser's parameters and the official PyTorch state dict (official state
dict layout).

Every official tensor is one `Entry`: the module parameter path, the layer index inside a
stacked parameter (or None), and the transform between layouts:
  linear  torch (out, in)             <-> kernel (in, out)
  conv3d  torch (O, I, kT, kH, kW)    <-> kernel (kT, kH, kW, I, O)
  conv2d  torch (O, I, kH, kW)        <-> kernel (kH, kW, I, O)
  copy    identical layout
`rope` marks tensors whose output channels hold RoPE'd q/k features: within each head they are
permuted from Wan's interleaved pairs to rotate-half order (see kernels/attention/reference.py).
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from o2a_jax.layers.embeddings import interleaved_to_rotate_half

# (our stacked prefix, official prefix) for parameters stacked on a leading layer axis.
_STACKS = (
  ("refextractor.blocks.", "refextractor.blocks.{i}."),
  ("pose_blocks.", "controlnet.blocks.{i}."),
  ("blocks.", "blocks.{i}."),
)

# Renames applied to the path after the stack prefix is replaced: (regex, replacement, kind).
_RULES: tuple[tuple[str, str, str], ...] = (
  (r"^pose_zero\.kernel$", "controlnet_zero.{i}.weight", "linear"),
  (r"^pose_zero\.bias$", "controlnet_zero.{i}.bias", "copy"),
  (r"^refextractor\.ref_kernel$", "refextractor.ref_blocks.{i}.weight", "linear"),
  (r"^refextractor\.ref_bias$", "refextractor.ref_blocks.{i}.bias", "copy"),
  (r"^(refextractor\.)?patch_embedding\.kernel$", r"\1patch_embedding.weight", "conv3d"),
  (r"^(refextractor\.)?patch_embedding\.bias$", r"\1patch_embedding.bias", "copy"),
  (
    r"^(refextractor\.)?time_embedder\.(linear_[12])\.kernel$",
    r"\1condition_embedder.time_embedder.\2.weight",
    "linear",
  ),
  (
    r"^(refextractor\.)?time_embedder\.(linear_[12])\.bias$",
    r"\1condition_embedder.time_embedder.\2.bias",
    "copy",
  ),
  (
    r"^(refextractor\.)?time_embedder\.time_proj\.kernel$",
    r"\1condition_embedder.time_proj.weight",
    "linear",
  ),
  (
    r"^(refextractor\.)?time_embedder\.time_proj\.bias$",
    r"\1condition_embedder.time_proj.bias",
    "copy",
  ),
  (
    r"^text_embedder\.(linear_[12])\.kernel$",
    r"condition_embedder.text_embedder.\1.weight",
    "linear",
  ),
  (r"^text_embedder\.(linear_[12])\.bias$", r"condition_embedder.text_embedder.\1.bias", "copy"),
  (r"^image_to_cond\.(conv_in|conv_out)\.kernel$", r"image_to_cond.\1.weight", "conv2d"),
  (r"^image_to_cond\.(conv_in|conv_out)\.bias$", r"image_to_cond.\1.bias", "copy"),
  (
    r"^image_to_cond\.resnets\.(\d+)\.(conv[12])\.kernel$",
    r"image_to_cond.down_blocks.\1.resnets.0.\2.weight",
    "conv2d",
  ),
  (
    r"^image_to_cond\.resnets\.(\d+)\.(conv[12])\.bias$",
    r"image_to_cond.down_blocks.\1.resnets.0.\2.bias",
    "copy",
  ),
  (
    r"^image_to_cond\.resnets\.(\d+)\.(norm[12])\.scale$",
    r"image_to_cond.down_blocks.\1.resnets.0.\2.weight",
    "copy",
  ),
  (
    r"^image_to_cond\.resnets\.(\d+)\.(norm[12])\.bias$",
    r"image_to_cond.down_blocks.\1.resnets.0.\2.bias",
    "copy",
  ),
  (r"^pose_encoder\.(conv_in|conv_out)\.kernel$", r"input_hint_block.\1.conv.weight", "conv3d"),
  (r"^pose_encoder\.(conv_in|conv_out)\.bias$", r"input_hint_block.\1.conv.bias", "copy"),
  (
    r"^pose_encoder\.resnets\.(\d+)\.(conv[12])\.kernel$",
    r"input_hint_block.down_blocks.\1.resnets.0.\2.conv.weight",
    "conv3d",
  ),
  (
    r"^pose_encoder\.resnets\.(\d+)\.(conv[12])\.bias$",
    r"input_hint_block.down_blocks.\1.resnets.0.\2.conv.bias",
    "copy",
  ),
  (
    r"^pose_encoder\.resnets\.(\d+)\.(norm[12])\.scale$",
    r"input_hint_block.down_blocks.\1.resnets.0.\2.weight",
    "copy",
  ),
  (
    r"^pose_encoder\.resnets\.(\d+)\.(norm[12])\.bias$",
    r"input_hint_block.down_blocks.\1.resnets.0.\2.bias",
    "copy",
  ),
  (
    r"^pose_encoder\.downs\.(\d+)\.kernel$",
    r"input_hint_block.down_blocks.\1.downsamplers.0.conv.conv.weight",
    "conv3d",
  ),
  (
    r"^pose_encoder\.downs\.(\d+)\.bias$",
    r"input_hint_block.down_blocks.\1.downsamplers.0.conv.conv.bias",
    "copy",
  ),
  # Inside blocks (the stack prefix is already official).
  (r"^(.*)\.attn([12])\.to_out\.kernel$", r"\1.attn\2.to_out.0.weight", "linear"),
  (r"^(.*)\.attn([12])\.to_out\.bias$", r"\1.attn\2.to_out.0.bias", "copy"),
  (r"^(.*)\.(attn[12]\.(?:to_[qkv]|add_[kv]_proj))\.kernel$", r"\1.\2.weight", "linear"),
  (r"^(.*)\.(attn[12]\.(?:to_[qkv]|add_[kv]_proj))\.bias$", r"\1.\2.bias", "copy"),
  (r"^(.*)\.(attn[12]\.norm_(?:q|k|added_k))\.scale$", r"\1.\2.weight", "copy"),
  (r"^(.*)\.ffn_in\.kernel$", r"\1.ffn.net.0.proj.weight", "linear"),
  (r"^(.*)\.ffn_in\.bias$", r"\1.ffn.net.0.proj.bias", "copy"),
  (r"^(.*)\.ffn_out\.kernel$", r"\1.ffn.net.2.weight", "linear"),
  (r"^(.*)\.ffn_out\.bias$", r"\1.ffn.net.2.bias", "copy"),
  (r"^(.*)\.norm2\.scale$", r"\1.norm2.weight", "copy"),
  (r"^(.*)\.norm2\.bias$", r"\1.norm2.bias", "copy"),
  (r"^(.*\.)?scale_shift_table$", r"\1scale_shift_table", "copy"),
  (r"^proj_out\.kernel$", "proj_out.weight", "linear"),
  (r"^proj_out\.bias$", "proj_out.bias", "copy"),
)

# Official key suffixes whose output channels are RoPE'd q/k features (self-attention only).
_ROPE = re.compile(r"attn1\.(to_q|to_k|add_k_proj|norm_q|norm_k|norm_added_k)\.(weight|bias)$")
_STACKED_TOPLEVEL = ("pose_zero.", "refextractor.ref_")


@dataclasses.dataclass(frozen=True)
class Entry:
  key: str  # official state-dict key
  path: str  # dotted parameter path in the module
  layer: int | None  # index into the stacked leading axis, or None
  kind: str  # linear | conv3d | conv2d | copy
  rope: bool  # permute output channels interleaved <-> rotate-half


def _official_name(path: str) -> tuple[str, str, bool]:
  """(official key template with {i}, kind, stacked) for one parameter path."""
  name, stacked = path, False
  for ours, theirs in _STACKS:
    if name.startswith(ours):
      name, stacked = theirs + name[len(ours) :], True
      break
  stacked = stacked or path.startswith(_STACKED_TOPLEVEL)
  for pattern, repl, kind in _RULES:
    if re.match(pattern, name):
      return re.sub(pattern, repl, name), kind, stacked
  raise KeyError(f"no official name for parameter {path!r}")


def entries(param_shapes: dict[str, tuple[int, ...]]) -> list[Entry]:
  """Entries for every parameter (path -> shape of our, possibly stacked, array)."""
  out = []
  for path, shape in param_shapes.items():
    template, kind, stacked = _official_name(path)
    layers = range(shape[0]) if stacked else [None]
    for i in layers:
      key = template.replace("{i}", str(i))
      out.append(Entry(key, path, i, kind, bool(_ROPE.search(key))))
  return out


def torch_shape(entry: Entry, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of an entry given our parameter's (stacked) shape."""
  if entry.layer is not None:
    shape = shape[1:]
  if entry.kind == "linear":
    return (shape[1], shape[0])
  if entry.kind == "conv3d":
    kt, kh, kw, i, o = shape
    return (o, i, kt, kh, kw)
  if entry.kind == "conv2d":
    kh, kw, i, o = shape
    return (o, i, kh, kw)
  return tuple(shape)


def _head_perm(n: int, head_dim: int) -> np.ndarray:
  perm = interleaved_to_rotate_half(head_dim)
  return (np.arange(n // head_dim)[:, None] * head_dim + perm[None]).reshape(-1)


def to_ours(entry: Entry, t: np.ndarray, head_dim: int) -> np.ndarray:
  """Official tensor -> our layout (one layer of a stacked parameter)."""
  if entry.rope:
    t = t[_head_perm(t.shape[0], head_dim)]
  if entry.kind == "linear":
    return t.T
  if entry.kind == "conv3d":
    return t.transpose(2, 3, 4, 1, 0)
  if entry.kind == "conv2d":
    return t.transpose(2, 3, 1, 0)
  return t


def to_official(entry: Entry, a: np.ndarray, head_dim: int) -> np.ndarray:
  """Our layout (one layer) -> official tensor, the exact inverse of `to_ours`."""
  if entry.kind == "linear":
    a = a.T
  elif entry.kind == "conv3d":
    a = a.transpose(4, 3, 0, 1, 2)
  elif entry.kind == "conv2d":
    a = a.transpose(3, 2, 0, 1)
  if entry.rope:
    a = a[np.argsort(_head_perm(a.shape[0], head_dim))]
  return np.ascontiguousarray(a)
