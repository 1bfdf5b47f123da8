"""Native checkpoints: Orbax checkpoints of the denoiser's parameter state plus its config.

Layout of a native checkpoint folder (written by Orbax atomically: a temporary folder renamed
on success, with a commit marker):
  params/   the NNX Param state as a nested dict (stacked blocks keep their leading axis)
  config/   the DenoiserConfig as JSON, so the architecture is known without the weights

Restoring takes the shardings from the current mesh (`jax.set_mesh`), so a checkpoint saved on
one mesh restores onto another; without a mesh it restores onto the default device.
`import_official` streams an official checkpoint into this format one tensor at a time through
disk-backed buffers, so converting needs far less memory than the checkpoint's size.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from o2a_jax import sharding
from o2a_jax.convert import official_layout as layout
from o2a_jax.convert import safetensors_io as sio
from o2a_jax.convert.official import _dtype_overrides, abstract_model, infer_config, param_shapes
from o2a_jax.error_text import first_line
from o2a_jax.model.config import DenoiserConfig
from o2a_jax.model.denoiser import Denoiser


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _config_json(cfg: DenoiserConfig) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def _refuse_existing(path: pathlib.Path) -> None:
  if path.exists():
    raise FileExistsError(f"{path} already exists; choose a new destination or remove it first")


def save_native(model: Denoiser, path: str | os.PathLike) -> pathlib.Path:
  """Saves the model's parameters and config as an Orbax checkpoint folder."""
  path = pathlib.Path(path).absolute()
  _refuse_existing(path)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  _save(path, params, model.cfg)
  return path


def _save(path: pathlib.Path, params, cfg: DenoiserConfig, *, streamed: bool = False) -> None:
  if not streamed:
    ckpt = _checkpointer()
    params_args = ocp.args.StandardSave(params)
  else:
    # numpy leaves backed by finished disk buffers: written by tensorstore straight from the
    # file pages (no defensive deep copy, which would stage the whole model in memory) with a
    # small in-flight budget. The on-disk format is the standard one.
    registry = ocp.type_handlers.create_type_handler_registry(
      (np.ndarray, ocp.type_handlers.NumpyHandler(deepcopy_host_arrays=False))
    )
    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, type_handler_registry=registry)
    ckpt = ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(params=handler, config=ocp.JsonCheckpointHandler())
    )
    params_args = ocp.args.PyTreeSave(params)
  config_args = ocp.args.JsonSave(_config_json(cfg))
  ckpt.save(path, args=ocp.args.Composite(params=params_args, config=config_args))
  ckpt.close()


def read_config(path: str | os.PathLike, **overrides) -> DenoiserConfig:
  """The DenoiserConfig stored in a native checkpoint (with optional field overrides)."""
  path = pathlib.Path(path).absolute()
  if not (path / "config").exists() or not (path / "params").exists():
    raise ValueError(f"{path} is not a native o2a_jax checkpoint (no params/ and config/)")
  ckpt = _checkpointer()
  try:
    cfg = ckpt.restore(path, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    return DenoiserConfig(**{**cfg, **overrides})
  except Exception as e:
    raise _unreadable(path, "config", e) from None
  finally:
    ckpt.close()


def _unreadable(path: pathlib.Path, part: str, e: BaseException) -> ValueError:
  return ValueError(
    f"native checkpoint {str(path)!r}: its {part} cannot be read ({first_line(e)}); the "
    "checkpoint is damaged or incomplete: re-run `o2a convert import`"
  )


def load_native(path: str | os.PathLike, **overrides) -> Denoiser:
  """Restores a native checkpoint onto the current mesh (or the default device).

  `overrides` change DenoiserConfig fields that do not alter parameter shapes, e.g.
  `dtype`/`param_dtype` (values are cast on restore), `attn_impl`, `remat`.
  """
  path = pathlib.Path(path).absolute()
  cfg = read_config(path, **overrides)
  abstract = abstract_model(cfg)
  graphdef, state = nnx.split(abstract)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    concrete = jax.sharding.get_mesh()
    with sharding.axis_rules():
      specs = nnx.get_partition_spec(state)
    target = jax.tree.map(
      lambda v, s: jax.ShapeDtypeStruct(
        v.shape, v.dtype, sharding=jax.sharding.NamedSharding(concrete, s)
      ),
      nnx.to_pure_dict(state),
      nnx.to_pure_dict(specs),
    )
  else:
    dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
      lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=dev), nnx.to_pure_dict(state)
    )
  ckpt = _checkpointer()
  try:
    args = ocp.args.Composite(params=ocp.args.StandardRestore(target))
    restored = ckpt.restore(path, args=args)
  except Exception as e:
    raise _unreadable(path, "parameters", e) from None
  finally:
    ckpt.close()
  nnx.replace_by_pure_dict(state, restored["params"])
  return nnx.merge(graphdef, state)


def _release(buf: np.memmap) -> None:
  """Writes a finished disk-backed buffer out and drops its pages from this process."""
  buf.flush()
  mm = getattr(buf, "_mmap", None)
  if mm is not None and hasattr(mmap, "MADV_DONTNEED"):
    mm.madvise(mmap.MADV_DONTNEED)


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
  default a temporary folder beside `dst`) from memory-mapped source tensors, so neither the
  source nor the result is ever held in memory as a whole. Keys are checked before anything
  is written; on any failure nothing is left at `dst`.
  """
  dst = pathlib.Path(dst).absolute()
  _refuse_existing(dst)
  with sio.TensorSource(src) as source:
    cfg = infer_config(source.shapes(), **_dtype_overrides(dtype))
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
      remaining = {p: 0 for p in shapes}
      for e in entries:
        remaining[e.path] += 1
      for e in entries:  # grouped by parameter, so each buffer is finished in turn
        buf = buffers[e.path]
        t = layout.to_ours(e, source[e.key], cfg.head_dim).astype(np_dtype)
        if e.layer is None:
          buf[...] = t
        else:
          buf[e.layer] = t
        del t
        remaining[e.path] -= 1
        if not remaining[e.path]:
          _release(buf)
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
      _save(dst, nested, cfg, streamed=True)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return cfg


def _nest(path: str, value) -> dict:
  node = value
  for part in reversed(path.split(".")):
    node = {int(part) if part.isdigit() else part: node}
  return node


def _leaf(tree: dict, path: str):
  for part in path.split("."):
    tree = tree[int(part) if part.isdigit() else part]
  return tree


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
  from o2a_jax.convert.official import export_dtype

  src, dst = pathlib.Path(src).absolute(), pathlib.Path(dst)
  out_dtype = export_dtype(dtype)
  if dst.exists() and (not dst.is_dir() or any(dst.iterdir())):
    raise FileExistsError(f"{dst} exists and is not an empty folder; choose a new destination")
  cfg = read_config(src)
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
  ckpt = _checkpointer()
  cache: dict[str, np.ndarray] = {}

  def get(key: str) -> np.ndarray:
    e = by_key[key]
    if e.path not in cache:
      cache.clear()  # drop the previous parameter before restoring the next
      item = _nest(e.path, np.zeros((), dtypes[e.path]))
      restore_args = _nest(e.path, ocp.RestoreArgs(restore_type=np.ndarray))
      got = ckpt.restore(
        src,
        args=ocp.args.Composite(
          params=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        ),
      )
      cache[e.path] = np.asarray(_leaf(got["params"], e.path))
    a = cache[e.path] if e.layer is None else cache[e.path][e.layer]
    a = layout.to_official(e, a, cfg.head_dim)
    return a if out_dtype is None else a.astype(out_dtype)

  try:
    sio.write_sharded(dst, items, get, max_shard_bytes=max_shard_bytes, progress=progress)
  finally:
    ckpt.close()
  return len(items)
