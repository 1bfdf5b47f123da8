"""Loading and saving the denoiser in the official PyTorch layout (safetensors, no PyTorch).

Public names (contract): `load_official`, `official_state_dict`, `save_official`,
`official_shapes`. Loading infers the architecture from keys and shapes, checks every key
strictly before anything is built, and fills the parameters one tensor at a time from
memory-mapped files. Saving streams one tensor at a time into shards plus the index JSON.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax import sharding
from o2a_jax.checkpoint import refuse_adapters
from o2a_jax.io import safetensors as sio
from o2a_jax.model import param_names as layout
from o2a_jax.model import quantize
from o2a_jax.model.config import PRESETS, DenoiserConfig
from o2a_jax.model.denoiser import Denoiser
from o2a_jax.model.shapes import abstract_model, dtype_overrides, infer_config, param_shapes


def _shapes_and_entries(model: nnx.Module):
  shapes = param_shapes(model)
  entries = layout.entries(shapes)
  return shapes, entries


def official_shapes(preset: str | DenoiserConfig) -> dict[str, tuple[int, ...]]:
  """Official key -> PyTorch shape of a model, from `jax.eval_shape` of the real module."""
  cfg = preset if isinstance(preset, DenoiserConfig) else DenoiserConfig(**_preset(preset))
  shapes, entries = _shapes_and_entries(abstract_model(cfg))
  return {e.key: layout.torch_shape(e, shapes[e.path]) for e in entries}


def _preset(name: str) -> dict:
  if name not in PRESETS:
    raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
  return PRESETS[name]


def _current_mesh():
  mesh = jax.sharding.get_abstract_mesh()
  return None if mesh.empty else jax.sharding.get_mesh()


def _place(arr: np.ndarray, spec, mesh) -> jax.Array:
  if mesh is None:
    return jnp.asarray(arr)
  return jax.device_put(arr, jax.sharding.NamedSharding(mesh, spec))


def load_official(
  path: str | os.PathLike,
  *,
  dtype=jnp.float32,
  progress: Callable[[int], None] | None = None,
  **config_overrides,
) -> Denoiser:
  """Loads an official checkpoint (a folder of `*.safetensors` shards or one file).

  Args:
    path: folder or file; `*.json` files (e.g. the shard index) are ignored, as officially.
    dtype: parameter and compute dtype, float32 or bfloat16 (the released bf16 inference).
    progress: called with the number of tensors done after each tensor.
    **config_overrides: DenoiserConfig fields shapes cannot give (e.g. `attn_impl`, `remat`).

  Raises:
    ValueError (CheckpointError): unreadable files, non-safetensors files, or missing,
      unexpected or mis-shaped keys (all named, bounded lists). Nothing is loaded partially.
  """
  with sio.TensorSource(path) as src:
    cfg = infer_config(src.shapes(), **{**dtype_overrides(dtype), **config_overrides})
    abstract = abstract_model(cfg)
    shapes, entries = _shapes_and_entries(abstract)
    expected = {e.key: layout.torch_shape(e, shapes[e.path]) for e in entries}
    sio.check_keys(expected, src.shapes(), what=f"checkpoint {path}")

    mesh = _current_mesh()
    graphdef, state = nnx.split(abstract)
    with sharding.axis_rules():
      specs = nnx.get_partition_spec(state) if mesh is not None else None
    np_dtype = np.dtype(cfg.params_dtype)
    by_path: dict[str, list[layout.Entry]] = {}
    for e in entries:
      by_path.setdefault(e.path, []).append(e)
    done = 0
    flat_specs = dict(specs.flat_state()) if specs is not None else {}
    for key_path, var in state.flat_state():
      p = ".".join(map(str, key_path))
      buf = np.empty(shapes[p], np_dtype)
      for e in by_path[p]:
        t = layout.to_ours(e, src[e.key], cfg.head_dim).astype(np_dtype)
        if e.layer is None:
          buf[...] = t
        else:
          buf[e.layer] = t
        done += 1
        if progress is not None:
          progress(done)
      spec = flat_specs[key_path].get_value() if mesh is not None else None
      var.set_value(_place(buf, spec, mesh))
      del buf
    return nnx.merge(graphdef, state)


def _iter_official(model: Denoiser, dtype=None):
  """(entry, torch shape, np dtype, getter) for every official tensor, in official order."""
  refuse_adapters(model)
  if quantize.quantized_paths(model):
    raise ValueError(
      f"the model's transformer linears are {quantize.quantized_format(model)}; the official "
      "layout stores float weights: export the float checkpoint it was quantised from"
    )
  cfg = model.cfg
  shapes, entries = _shapes_and_entries(model)
  params = {".".join(map(str, p)): v for p, v in nnx.state(model, nnx.Param).flat_state()}
  out_dtype = None if dtype is None else np.dtype(jnp.dtype(dtype))

  def getter(e: layout.Entry):
    v = params[e.path].get_value()
    a = np.asarray(jax.device_get(v if e.layer is None else v[e.layer]))  # one layer at a time
    a = layout.to_official(e, a, cfg.head_dim)
    return a if out_dtype is None else a.astype(out_dtype)

  order = {e.key: i for i, e in enumerate(entries)}
  entries = sorted(entries, key=lambda e: (_official_sort_key(e.key), order[e.key]))
  for e in entries:
    dt = out_dtype or np.dtype(params[e.path].get_value().dtype)
    yield e, layout.torch_shape(e, shapes[e.path]), dt, getter


def _official_sort_key(key: str):
  """Natural order: blocks.2 before blocks.10, as PyTorch's module order lists them."""
  return [int(t) if t.isdigit() else t for t in key.split(".")]


def official_state_dict(model: Denoiser, *, dtype=None) -> dict[str, np.ndarray]:
  """Exactly the official key set with PyTorch layouts (numpy arrays)."""
  return {e.key: get(e) for e, _, _, get in _iter_official(model, dtype)}


def export_dtype(dtype) -> np.dtype | None:
  """Validates an export dtype (None keeps each parameter's own)."""
  if dtype is None:
    return None
  dt = np.dtype(jnp.dtype(dtype))
  if dt.name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"export dtype must be float32, bfloat16 or float16, got {dt.name}")
  return dt


def save_official(
  model: Denoiser,
  path: str | os.PathLike,
  *,
  dtype=None,
  max_shard_bytes: int = 5 * 2**30,
  progress: Callable[[int], None] | None = None,
) -> pathlib.Path:
  """Writes sharded safetensors plus `model.safetensors.index.json` into the folder `path`.

  The folder is written under a temporary name and renamed when complete, so a failure
  leaves nothing behind; an existing non-empty folder is refused. Loadable by the official
  code with `load_state_dict(strict=True)`.
  """
  path = pathlib.Path(path)
  export_dtype(dtype)
  if path.exists() and (not path.is_dir() or any(path.iterdir())):  # refuse before any work
    raise FileExistsError(f"{path} exists and is not an empty folder; choose a new destination")
  items, getters = [], {}
  for e, shape, dt, get in _iter_official(model, dtype):
    items.append((e.key, dt, shape))
    getters[e.key] = (e, get)
  return sio.write_sharded(
    path,
    items,
    lambda k: getters[k][1](getters[k][0]),
    max_shard_bytes=max_shard_bytes,
    progress=progress,
  )
