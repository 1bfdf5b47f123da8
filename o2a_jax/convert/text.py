"""Loading the UMT5 text encoder from the transformers `UMT5EncoderModel` safetensors layout.

Public names: `load_text_encoder` (contract), `infer_text_config`, `text_encoder_keys`,
`checkpoint_fingerprint`. The architecture comes from the shapes, plus the release's
`config.json` (next to the weights) for what shapes cannot give: relative-attention buckets'
max distance, norm epsilon, activation. Keys are checked strictly before anything is built;
tensors are then read one at a time from memory-mapped files and placed with the parameters'
logical shardings when a mesh is current.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax import sharding
from o2a_jax.io import safetensors as sio
from o2a_jax.text.umt5 import UMT5Config, UMT5Encoder, abstract_text_encoder

EMBED_KEYS = ("shared.weight", "encoder.embed_tokens.weight")  # tied; either or both stored
_ATTN = "encoder.block.{i}.layer.0.SelfAttention."
_FF = "encoder.block.{i}.layer.1."
# Our stacked parameter -> (transformers key template, transpose?). torch Linear is [out, in].
_LAYER_KEYS = {
  "attn_norm": ("encoder.block.{i}.layer.0.layer_norm.weight", False),
  "q": (_ATTN + "q.weight", True),
  "k": (_ATTN + "k.weight", True),
  "v": (_ATTN + "v.weight", True),
  "o": (_ATTN + "o.weight", True),
  "rel_bias": (_ATTN + "relative_attention_bias.weight", False),
  "ffn_norm": (_FF + "layer_norm.weight", False),
  "wi_0": (_FF + "DenseReluDense.wi_0.weight", True),
  "wi_1": (_FF + "DenseReluDense.wi_1.weight", True),
  "wo": (_FF + "DenseReluDense.wo.weight", True),
}


def text_encoder_keys(cfg: UMT5Config, embed_keys=("shared.weight",)) -> dict[str, tuple]:
  """Every transformers key of an encoder with its PyTorch shape."""
  d, h, f, r, n = cfg.dim, cfg.num_heads * cfg.head_dim, cfg.ffn_dim, cfg.num_buckets, cfg.num_heads
  shapes = {
    "attn_norm": (d,), "q": (h, d), "k": (h, d), "v": (h, d), "o": (d, h), "rel_bias": (r, n),
    "ffn_norm": (d,), "wi_0": (f, d), "wi_1": (f, d), "wo": (d, f),
  }  # fmt: skip
  keys = {k: (cfg.vocab_size, d) for k in embed_keys}
  keys["encoder.final_layer_norm.weight"] = (d,)
  for i in range(cfg.num_layers):
    for name, (template, _) in _LAYER_KEYS.items():
      keys[template.format(i=i)] = shapes[name]
  return keys


def _read_config_json(path: pathlib.Path) -> dict:
  folder = path if path.is_dir() else path.parent
  file = folder / "config.json"
  if not file.exists():
    return {}
  try:
    return json.loads(file.read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise sio.CheckpointError(f"cannot read {file}: {e}") from e


def infer_text_config(
  shapes: Mapping[str, tuple[int, ...]], config_json: Mapping | None = None, **overrides
) -> UMT5Config:
  """The architecture from transformers keys and shapes, plus `config.json` values.

  Without a config.json, the values shapes cannot give take the transformers `UMT5Config`
  defaults, which are also those of the released UMT5-XXL (32 buckets, max distance 128,
  eps 1e-6, gated-gelu).
  """
  config_json = dict(config_json or {})

  def get(key):
    if key not in shapes:
      raise sio.CheckpointError(
        f"checkpoint lacks {key!r}: is this a transformers UMT5EncoderModel checkpoint?"
      )
    return shapes[key]

  embed = next((shapes[k] for k in EMBED_KEYS if k in shapes), None)
  if embed is None:
    raise sio.CheckpointError(
      f"checkpoint has no token embedding (expected {' or '.join(EMBED_KEYS)}); "
      "is this a transformers UMT5EncoderModel checkpoint?"
    )
  rx = re.compile(r"^encoder\.block\.(\d+)\.")
  idx = {int(m.group(1)) for k in shapes if (m := rx.match(k))}
  if not idx or idx != set(range(len(idx))):
    raise sio.CheckpointError(f"encoder block indices must be 0..n-1, found {sorted(idx)[:12]}")
  if any(k.endswith("DenseReluDense.wi.weight") for k in shapes):
    raise sio.CheckpointError(
      "checkpoint has a non-gated feed-forward (`wi.weight`); only gated UMT5/T5 v1.1 is supported"
    )
  rel = get(_LAYER_KEYS["rel_bias"][0].format(i=0))
  inner = get(_LAYER_KEYS["q"][0].format(i=0))[0]
  heads = rel[1]
  if inner % heads:
    raise sio.CheckpointError(f"attention width {inner} is not a multiple of {heads} heads")
  proj = config_json.get("feed_forward_proj", "gated-gelu")
  if not str(proj).startswith("gated-"):
    raise sio.CheckpointError(f"config.json feed_forward_proj={proj!r}; only gated-* is supported")
  cfg = dict(
    vocab_size=embed[0],
    dim=embed[1],
    num_heads=heads,
    head_dim=inner // heads,
    ffn_dim=get(_LAYER_KEYS["wi_0"][0].format(i=0))[0],
    num_layers=len(idx),
    num_buckets=rel[0],
    max_distance=int(config_json.get("relative_attention_max_distance", 128)),
    eps=float(config_json.get("layer_norm_epsilon", 1e-6)),
    activation=str(proj).split("-", 1)[1],
  )
  # config.json values that shapes also give must agree with them.
  for json_key, ours in (
    ("vocab_size", "vocab_size"), ("d_model", "dim"), ("num_heads", "num_heads"),
    ("d_kv", "head_dim"), ("d_ff", "ffn_dim"), ("num_layers", "num_layers"),
    ("relative_attention_num_buckets", "num_buckets"),
  ):  # fmt: skip
    if json_key in config_json and int(config_json[json_key]) != cfg[ours]:
      raise sio.CheckpointError(
        f"config.json {json_key}={config_json[json_key]} contradicts the weights' shapes "
        f"({cfg[ours]}); the config.json belongs to another model"
      )
  cfg.update(overrides)
  try:
    return UMT5Config(**cfg)
  except (TypeError, ValueError) as e:
    raise sio.CheckpointError(f"checkpoint implies an invalid architecture: {e}") from e


def checkpoint_fingerprint(path: str | os.PathLike) -> str:
  """A short id of a checkpoint's weights, cheap to compute on a multi-GB checkpoint.

  Hashes every safetensors file's name, size, header (names, dtypes, shapes, offsets) and 16
  evenly spaced 64 KiB samples of its data: different weights give different ids with
  overwhelming probability, without reading the whole checkpoint.
  """
  digest = hashlib.sha256()
  for file in sio.list_files(path):
    size = file.stat().st_size
    digest.update(f"{file.name}\0{size}\0".encode())
    with open(file, "rb") as f:
      head = f.read(8)
      n = int.from_bytes(head, "little") if len(head) == 8 else 0
      digest.update(head + f.read(min(n, size)))
      start, chunk = 8 + n, 1 << 16
      span = max(size - start - chunk, 0)
      for j in range(16):
        f.seek(start + span * j // 15)
        digest.update(f.read(chunk))
  return digest.hexdigest()[:16]


def _current_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else jax.sharding.get_mesh()


def _zeros(shape, dtype, placement) -> jax.Array:
  return jax.jit(lambda: jnp.zeros(shape, dtype), out_shardings=placement)()


@functools.partial(jax.jit, donate_argnums=0)
def _set_rows(buf: jax.Array, block: jax.Array, start) -> jax.Array:
  return jax.lax.dynamic_update_slice_in_dim(buf, block.astype(buf.dtype), start, 0)


def _row_chunks(arr: np.ndarray, values: int = 1 << 24):
  """(start, rows) blocks of about `values` values (the last block is smaller)."""
  rows = max(1, values // max(1, int(np.prod(arr.shape[1:]))))
  for start in range(0, arr.shape[0], rows):
    yield start, arr[start : start + rows]


def _check_tied(src: sio.TensorSource) -> None:
  """Both embedding copies stored: they are one tied tensor; compare a few rows cheaply."""
  a, b = src[EMBED_KEYS[0]], src[EMBED_KEYS[1]]
  rows = np.unique(np.linspace(0, a.shape[0] - 1, 9).astype(int))
  if not np.array_equal(a[rows], b[rows]):
    raise sio.CheckpointError(
      f"{EMBED_KEYS[0]} and {EMBED_KEYS[1]} differ; they are tied in UMT5EncoderModel, so the "
      "checkpoint is inconsistent. Keep only one of them."
    )


def load_text_encoder(
  path: str | os.PathLike,
  *,
  dtype=jnp.float32,
  param_dtype=None,
  progress: Callable[[int, int], None] | None = None,
  **config_overrides,
) -> UMT5Encoder:
  """Loads a transformers `UMT5EncoderModel` checkpoint (Wan2.1 Diffusers `text_encoder/`).

  Args:
    path: the folder of `*.safetensors` shards (its `config.json` is read when present), or one
      safetensors file (a `config.json` beside it is read when present).
    dtype: compute dtype, float32 or bfloat16 (the official inference runs bfloat16).
    param_dtype: storage dtype of the matmul weights and the embedding (default: `dtype`);
      norm scales and the relative-position tables are always float32.
    progress: called as `progress(done, total)` after each tensor.
    **config_overrides: UMT5Config fields to force (e.g. `max_distance`).

  Raises:
    ValueError (CheckpointError): unreadable or non-safetensors files, or missing, unexpected or
      mis-shaped keys (named, bounded lists). Nothing is loaded partially.
  """
  for name, dt in (("dtype", dtype), ("param_dtype", param_dtype)):
    if dt is not None and jnp.dtype(dt).name not in ("float32", "bfloat16"):
      raise ValueError(f"{name} must be float32 or bfloat16, got {jnp.dtype(dt).name}")
  path = pathlib.Path(path)
  with sio.TensorSource(path) as src:
    shapes = src.shapes()
    cfg = infer_text_config(shapes, _read_config_json(path), **config_overrides)
    embed_keys = tuple(k for k in EMBED_KEYS if k in shapes) or EMBED_KEYS[:1]
    sio.check_keys(text_encoder_keys(cfg, embed_keys), shapes, what=f"text encoder {path}")
    if len(embed_keys) == 2:
      _check_tied(src)

    abstract = abstract_text_encoder(cfg, dtype=dtype, param_dtype=param_dtype)
    mesh = _current_mesh()
    graphdef, state = nnx.split(abstract)
    with sharding.axis_rules():
      specs = dict(nnx.get_partition_spec(state).flat_state()) if mesh is not None else {}
    total, done = len(shapes) - len(embed_keys) + 1, 0

    for key_path, var in state.flat_state():
      name = ".".join(map(str, key_path))
      target = var.get_value()
      np_dtype = np.dtype(target.dtype)
      spec = specs[key_path].get_value() if mesh is not None else None
      placement = jax.sharding.NamedSharding(mesh, spec) if mesh is not None else None
      if name == "embedding":
        parts = _row_chunks(src[embed_keys[0]])
      elif name == "final_norm":
        parts = [(0, src["encoder.final_layer_norm.weight"])]
      else:
        template, transpose = _LAYER_KEYS[name.split(".", 1)[1]]
        parts = (
          (i, (t.T if transpose else t)[None])
          for i, t in enumerate(src[template.format(i=i)] for i in range(cfg.num_layers))
        )
      # Filled in place, one layer (or row block) at a time: a host buffer of a whole stack plus
      # its transfer would cost 2-3x its size in memory (2 GB per bf16 XXL `wi` stack).
      buf = _zeros(target.shape, target.dtype, placement)
      for start, block in parts:
        buf = _set_rows(buf, jnp.asarray(np.asarray(block, np_dtype)), start)
        if start == 0 or name.startswith("layers."):
          done += 1
          if progress is not None:
            progress(done, total)
      var.set_value(buf)
      del buf
    encoder = nnx.merge(graphdef, state)
  encoder.checkpoint_id = checkpoint_fingerprint(path)
  return encoder
