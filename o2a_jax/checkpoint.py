"""Native checkpoints: Orbax checkpoints of the denoiser's parameter state plus its config.

Layout of a native checkpoint folder (written by Orbax atomically: a temporary folder renamed
on success, with a commit marker):
  params/   the NNX Param state as a nested dict (stacked blocks keep their leading axis)
  config/   the DenoiserConfig as JSON, so the architecture is known without the weights
int8 / fp8 checkpoints (`o2a convert quantize`, `o2a_jax.model.quantize`) add:
  quantization/  JSON: the scheme and the quantised layers (their kernels in params/ are codes)
  quant/         the per-output-channel scales (`QuantScale`) as a nested dict
Models with LoRA adapters are refused: merge them first (`o2a_jax.model.lora.merge`).

Restoring takes the shardings from the current mesh (`jax.set_mesh`), so a checkpoint saved on
one mesh restores onto another; without a mesh it restores onto the default device.
`save_params(..., streamed=True)` writes disk-backed leaves a storage chunk at a time and
`restore_leaf` reads one parameter: `o2a_jax.convert.native` streams conversions through them.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import mmap
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from flax import nnx

from o2a_jax import sharding
from o2a_jax.io.error_text import first_line
from o2a_jax.layers.linear import LoRAParam, QuantScale
from o2a_jax.model import quantize
from o2a_jax.model.config import DenoiserConfig
from o2a_jax.model.denoiser import Denoiser
from o2a_jax.model.shapes import abstract_model


def _checkpointer() -> ocp.Checkpointer:
  return ocp.Checkpointer(ocp.CompositeCheckpointHandler())


def _config_json(cfg: DenoiserConfig) -> dict:
  return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


def refuse_existing(path: pathlib.Path) -> None:
  if path.exists():
    raise FileExistsError(f"{path} already exists; choose a new destination or remove it first")


def save_native(model: Denoiser, path: str | os.PathLike) -> pathlib.Path:
  """Saves the model's parameters and config as an Orbax checkpoint folder."""
  path = pathlib.Path(path).absolute()
  refuse_adapters(model)
  refuse_existing(path)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  extra = {}
  layers = quantize.quantized_paths(model)
  if layers:
    scales = nnx.to_pure_dict(nnx.state(model, QuantScale))
    extra = dict(
      quant=ocp.args.StandardSave(scales),
      quantization=ocp.args.JsonSave(
        {"scheme": quantize.SCHEMES[quantize.quantized_format(model)], "layers": layers}
      ),
    )
  save_params(path, params, model.cfg, extra=extra)
  return path


def refuse_adapters(model) -> None:
  """Checkpoint formats store base weights only: adapters would be dropped without a word."""
  if jax.tree.leaves(nnx.state(model, LoRAParam)):
    raise ValueError(
      "the model has LoRA adapters, which this format does not store: merge them into the "
      "weights first (o2a_jax.model.lora.merge), or write the adapter file"
    )


_SLICE_BYTES = 64 * 2**20


class _SlicedNumpyHandler(ocp.type_handlers.NumpyHandler):
  """Writes disk-backed numpy leaves one leaf and one storage chunk (<= 64 MiB) at a time.

  Orbax's handler writes every leaf at once from the whole array, so every page of every
  buffer ends up in this process's memory (4.7 GiB resident for the 8.2 GiB 1.3B model). Here
  the leaves are stored in chunks of at most `_SLICE_BYTES` (`SaveArgs.chunk_byte_size`) and
  written in turn, one whole chunk per write (a partial chunk would be read back and rewritten),
  and each written chunk's source pages are dropped from the process (they stay in the kernel's
  page cache, reclaimable). The stored arrays and format are the standard ones.
  """

  def __init__(self):
    super().__init__(deepcopy_host_arrays=False)
    self._locks: dict = {}
    self.slices_written = 0  # checked by tests: this override must stay on Orbax's write path

  def _lock(self) -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    return self._locks.setdefault(id(loop), asyncio.Lock())

  async def _open_and_write(self, value, tspec, ts_context):
    t = await ts.open(ts.Spec(tspec), create=True, open=True, context=ts_context)
    async with self._lock():
      grid = t.chunk_layout.write_chunk.shape or value.shape
      grid = [c or n for c, n in zip(grid, value.shape)]
      starts = itertools.product(*(range(0, n, c) for n, c in zip(value.shape, grid)))
      for start in starts:
        region = tuple(slice(i, min(i + c, n)) for i, c, n in zip(start, grid, value.shape))
        await t[region].write(np.ascontiguousarray(value[region]))
        self.slices_written += 1
        drop_pages(value)


def drop_pages(value: np.ndarray) -> None:
  """Unmaps a disk-backed array's pages from this process (no-op for ordinary arrays)."""
  base = value
  while base is not None and not isinstance(getattr(base, "_mmap", None), mmap.mmap):
    base = getattr(base, "base", None)
  if base is not None and hasattr(mmap, "MADV_DONTNEED"):
    base._mmap.madvise(mmap.MADV_DONTNEED)


def save_params(
  path: pathlib.Path, params, cfg: DenoiserConfig, *, streamed: bool = False, extra=None
) -> None:
  """Writes a nested parameter dict and its config as a native checkpoint folder at `path`.

  `streamed`: the leaves are finished disk-backed numpy buffers (`o2a convert import`),
  written a slice at a time so that resident memory stays small. `extra`: more Orbax items
  (name -> args), e.g. the int8 scales.
  """
  if not streamed:
    ckpt = _checkpointer()
    params_args = ocp.args.StandardSave(params)
  else:
    # numpy leaves backed by finished disk buffers: written by tensorstore straight from the
    # file pages (no defensive deep copy, which would stage the whole model in memory), a
    # slice at a time (`_SlicedNumpyHandler`). The on-disk format is the standard one.
    registry = ocp.type_handlers.create_type_handler_registry((np.ndarray, _SlicedNumpyHandler()))
    handler = ocp.PyTreeCheckpointHandler(save_concurrent_gb=1, type_handler_registry=registry)
    ckpt = ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(params=handler, config=ocp.JsonCheckpointHandler())
    )
    chunked = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=_SLICE_BYTES), params)
    params_args = ocp.args.PyTreeSave(params, save_args=chunked)
  config_args = ocp.args.JsonSave(_config_json(cfg))
  items = dict(params=params_args, config=config_args, **(extra or {}))
  ckpt.save(path, args=ocp.args.Composite(**items))
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


def read_quantization(path: str | os.PathLike) -> dict | None:
  """The `quantization` record (scheme, layers, format) of a quantised native checkpoint, or
  None for a float one."""
  path = pathlib.Path(path).absolute()
  if not (path / "quantization").exists():
    return None
  ckpt = _checkpointer()
  try:
    args = ocp.args.Composite(quantization=ocp.args.JsonRestore())
    record = dict(ckpt.restore(path, args=args)["quantization"])
  except Exception as e:
    raise _unreadable(path, "quantization record", e) from None
  finally:
    ckpt.close()
  formats = {scheme: fmt for fmt, scheme in quantize.SCHEMES.items()}
  if record.get("scheme") not in formats:
    raise ValueError(
      f"native checkpoint {str(path)!r} uses quantization {record.get('scheme')!r}; this version "
      f"reads {sorted(formats)}"
    )
  return dict(record, format=formats[record["scheme"]])


def load_native(path: str | os.PathLike, **overrides) -> Denoiser:
  """Restores a native checkpoint (float, int8 or fp8) onto the current mesh (or the default
  device).

  `overrides` change DenoiserConfig fields that do not alter parameter shapes, e.g.
  `dtype`/`param_dtype` (float values are cast on restore; int8/fp8 codes stay as stored),
  `attn_impl`, `remat`.
  """
  path = pathlib.Path(path).absolute()
  cfg = read_config(path, **overrides)
  record = read_quantization(path)
  if record is None:
    graphdef, params = nnx.split(abstract_model(cfg))
    states = dict(params=params)
  else:
    abstract = quantize.abstract_quantized(cfg, list(record["layers"]), record["format"])
    graphdef, params, scales = nnx.split(abstract, nnx.Param, QuantScale)
    states = dict(params=params, quant=scales)
  targets = {name: _restore_target(state) for name, state in states.items()}
  ckpt = _checkpointer()
  try:
    args = ocp.args.Composite(**{n: ocp.args.StandardRestore(t) for n, t in targets.items()})
    restored = ckpt.restore(path, args=args)
  except Exception as e:
    raise _unreadable(path, "parameters", e) from None
  finally:
    ckpt.close()
  for name, state in states.items():
    nnx.replace_by_pure_dict(state, restored[name])
  return nnx.merge(graphdef, *states.values())


def _restore_target(state) -> dict:
  """ShapeDtypeStructs of an abstract state, placed on the current mesh or the default device."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    concrete = jax.sharding.get_mesh()
    with sharding.axis_rules():
      specs = nnx.get_partition_spec(state)
    return jax.tree.map(
      lambda v, s: jax.ShapeDtypeStruct(
        v.shape, v.dtype, sharding=jax.sharding.NamedSharding(concrete, s)
      ),
      nnx.to_pure_dict(state),
      nnx.to_pure_dict(specs),
    )
  dev = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  return jax.tree.map(
    lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=dev), nnx.to_pure_dict(state)
  )


def restore_leaf(path: str | os.PathLike, leaf: str, dtype) -> np.ndarray:
  """One parameter (dotted path, stacked blocks whole) of a native checkpoint, as numpy.

  Restores only that leaf (Orbax partial restore), so a caller walking the parameters holds
  one array at a time, never the model.
  """
  path = pathlib.Path(path).absolute()
  item = _nest(leaf, np.zeros((), dtype))
  restore_args = _nest(leaf, ocp.RestoreArgs(restore_type=np.ndarray))
  ckpt = _checkpointer()
  try:
    got = ckpt.restore(
      path,
      args=ocp.args.Composite(
        params=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
      ),
    )
  except Exception as e:
    raise _unreadable(path, f"parameter {leaf}", e) from None
  finally:
    ckpt.close()
  return np.asarray(_leaf(got["params"], leaf))


def _nest(path: str, value) -> dict:
  node = value
  for part in reversed(path.split(".")):
    node = {int(part) if part.isdigit() else part: node}
  return node


def _leaf(tree: dict, path: str):
  for part in path.split("."):
    tree = tree[int(part) if part.isdigit() else part]
  return tree
