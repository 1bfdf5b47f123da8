"""Official safetensors <-> native Orbax checkpoints, streamed (`o2a convert import|export`).

Both directions hold about one parameter at a time: import assembles each stacked parameter in
a disk-backed buffer from tensors read one by one, and the native checkpoint is written a slice
at a time (`o2a_jax.checkpoint.save_params(..., streamed=True)`); export restores one
parameter at a time (`o2a_jax.checkpoint.restore_leaf`) and streams the official shards.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

import numpy as np
from flax import nnx

from o2a_jax import checkpoint
from o2a_jax.convert.official import export_dtype
from o2a_jax.io import safetensors as sio
from o2a_jax.model import param_names as layout
from o2a_jax.model.config import DenoiserConfig
from o2a_jax.model.shapes import abstract_model, dtype_overrides, infer_config, param_shapes


def import_official(
  src: str | os.PathLike,
  dst: str | os.PathLike,
  *,
  dtype="float32",
  progress: Callable[[int], None] | None = None,
  scratch: str | os.PathLike | None = None,
) -> DenoiserConfig:
  """Official safetensors checkpoint -> native checkpoint, streaming tensor by tensor.

  Each stacked parameter is assembled in a disk-backed buffer (np.memmap in `scratch`, by
  default a temporary folder beside `dst`) from source tensors read one at a time, so neither
  the source nor the result is ever held in memory as a whole. Keys are checked before anything
  is written; on any failure nothing is left at `dst`.
  """
  dst = pathlib.Path(dst).absolute()
  checkpoint.refuse_existing(dst)
  with sio.TensorSource(src) as source:
    cfg = infer_config(source.shapes(), **dtype_overrides(dtype))
    abstract = abstract_model(cfg)
    shapes = param_shapes(abstract)
    entries = layout.entries(shapes)
    expected = {e.key: layout.torch_shape(e, shapes[e.path]) for e in entries}
    sio.check_keys(expected, source.shapes(), what=f"checkpoint {src}")
    np_dtype = np.dtype(cfg.params_dtype)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{dst.name}.scratch.", dir=scratch or dst.parent))
    try:
      buffers, done = {}, 0
      for i, path in enumerate(shapes):
        buffers[path] = np.lib.format.open_memmap(
          tmp / f"{i}.npy", mode="w+", dtype=np_dtype, shape=shapes[path]
        )
      for e in entries:  # grouped by parameter, so each buffer is finished in turn
        buf = buffers[e.path]
        t = layout.to_ours(e, source[e.key], cfg.head_dim).astype(np_dtype)
        if e.layer is None:
          buf[...] = t
        else:
          buf[e.layer] = t
        del t
        buf.flush()  # then drop its pages, after every tensor: a stacked parameter is 1.6 GB
        checkpoint.drop_pages(buf)
        done += 1
        if progress is not None:
          progress(done)
      nested: dict = {}
      for path, buf in buffers.items():
        node = nested
        *parents, leaf = path.split(".")
        for p in parents:
          node = node.setdefault(int(p) if p.isdigit() else p, {})
        node[leaf] = buf
      checkpoint.save_params(dst, nested, cfg, streamed=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return cfg


def export_native(
  src: str | os.PathLike,
  dst: str | os.PathLike,
  *,
  dtype=None,
  max_shard_bytes: int = 5 * 2**30,
  progress: Callable[[int], None] | None = None,
) -> int:
  """Native checkpoint -> official safetensors shards + index, one parameter at a time.

  Parameters are restored from the Orbax checkpoint one (stacked) leaf at a time, and the
  official tensors are written in leaf order, so the host holds at most one parameter array
  (the largest stacked one), never the whole model. Returns the number of tensors written.
  """
  src, dst = pathlib.Path(src).absolute(), pathlib.Path(dst)
  out_dtype = export_dtype(dtype)
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise FileExistsError(f"{dst} exists and is not an empty folder; choose a new destination")
  cfg = checkpoint.read_config(src)
  abstract = abstract_model(cfg)
  shapes = param_shapes(abstract)
  dtypes = {
    ".".join(map(str, p)): np.dtype(v.get_value().dtype)
    for p, v in nnx.state(abstract, nnx.Param).flat_state()
  }
  entries = layout.entries(shapes)  # grouped by parameter path, layers in order
  items = [
    (e.key, out_dtype or dtypes[e.path], layout.torch_shape(e, shapes[e.path])) for e in entries
  ]
  by_key = {e.key: e for e in entries}
  cache: dict[str, np.ndarray] = {}

  def get(key: str) -> np.ndarray:
    e = by_key[key]
    if e.path not in cache:
      cache.clear()  # drop the previous parameter before restoring the next
      cache[e.path] = checkpoint.restore_leaf(src, e.path, dtypes[e.path])
    a = cache[e.path] if e.layer is None else cache[e.path][e.layer]
    a = layout.to_official(e, a, cfg.head_dim)
    return a if out_dtype is None else a.astype(out_dtype)

  sio.write_sharded(dst, items, get, max_shard_bytes=max_shard_bytes, progress=progress)
  return len(items)
