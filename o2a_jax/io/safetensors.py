"""Streaming safetensors reading and writing with numpy only (no PyTorch, no pickle).

The format is an 8-byte little-endian header length, a JSON header mapping names to
`{dtype, shape, data_offsets}`, then the raw bytes. Reading preads one tensor at a time into
a fresh array, so the host holds only the tensors in use; writing streams tensors to disk one
by one. bfloat16 uses ml_dtypes.
"""

from __future__ import annotations

import json
import os
import pathlib
import struct
from collections.abc import Callable, Iterable, Iterator, Mapping

import ml_dtypes
import numpy as np

from o2a_jax.io.atomic import atomic_path

_DTYPES = {
  "F64": np.dtype(np.float64),
  "F32": np.dtype(np.float32),
  "F16": np.dtype(np.float16),
  "BF16": np.dtype(ml_dtypes.bfloat16),
  "I64": np.dtype(np.int64),
  "I32": np.dtype(np.int32),
  "I16": np.dtype(np.int16),
  "I8": np.dtype(np.int8),
  "U8": np.dtype(np.uint8),
  "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
MAX_LISTED = 12  # keys named in an error message, per category


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not match the expected layout."""


def _refuse_pickle(path: pathlib.Path) -> None:
  raise CheckpointError(
    f"{path} is a PyTorch pickle file; o2a_jax never unpickles files (it can run arbitrary code). "
    "Convert it once on a trusted machine with PyTorch installed:\n"
    '  python -c "import sys, torch, safetensors.torch as st; '
    "sd = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
    "sd = sd.get('module', sd); "
    'st.save_file({k: v.contiguous() for k, v in sd.items()}, sys.argv[2])" '
    f"{path} {path.with_suffix('.safetensors')}"
  )


def list_files(path: str | os.PathLike) -> list[pathlib.Path]:
  """The safetensors files of a checkpoint: one file, or every `*.safetensors` in a folder."""
  path = pathlib.Path(path)
  if not path.exists():
    raise CheckpointError(f"checkpoint path {path} does not exist")
  if path.is_file():
    if path.suffix in _PICKLE_SUFFIXES:
      _refuse_pickle(path)
    if path.suffix != ".safetensors":
      raise CheckpointError(f"{path} is not a .safetensors file")
    return [path]
  files = sorted(path.glob("*.safetensors"))
  if not files:
    pickles = sorted(p for p in path.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
      _refuse_pickle(pickles[0])
    raise CheckpointError(f"no *.safetensors files in folder {path}")
  return files


class TensorInfo:
  """Where one tensor lives: file, dtype, shape and byte range."""

  __slots__ = ("file", "dtype", "shape", "start", "end")

  def __init__(self, file, dtype, shape, start, end):
    self.file, self.dtype, self.shape, self.start, self.end = file, dtype, shape, start, end


def _read_header(file: pathlib.Path) -> tuple[dict, int]:
  try:
    with open(file, "rb") as f:
      raw = f.read(8)
      if len(raw) != 8:
        raise CheckpointError(f"{file} is too short to be a safetensors file")
      (n,) = struct.unpack("<Q", raw)
      size = file.stat().st_size
      if n > size - 8 or n > 100 * 2**20:
        raise CheckpointError(f"{file} is not a valid safetensors file (header length {n})")
      header = json.loads(f.read(n))
  except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
    raise CheckpointError(f"cannot read safetensors header of {file}: {e}") from e
  return header, 8 + n


class TensorSource(Mapping):
  """Read-only mapping key -> np.ndarray over one or many safetensors files, lazily loaded."""

  def __init__(self, path: str | os.PathLike):
    self.files = list_files(path)
    self.infos: dict[str, TensorInfo] = {}
    self._fds: dict[pathlib.Path, int] = {}
    for file in self.files:
      header, base = _read_header(file)
      size = file.stat().st_size
      for key, meta in header.items():
        if key == "__metadata__":
          continue
        if key in self.infos:
          raise CheckpointError(f"key {key!r} appears in both {self.infos[key].file} and {file}")
        try:
          dtype = _DTYPES[meta["dtype"]]
          shape = tuple(int(s) for s in meta["shape"])
          start, end = (base + int(o) for o in meta["data_offsets"])
        except (KeyError, TypeError, ValueError) as e:
          raise CheckpointError(f"{file}: bad header entry for {key!r}: {meta}") from e
        if end > size or end - start != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
          raise CheckpointError(
            f"{file}: tensor {key!r} has inconsistent offsets (truncated file?)"
          )
        self.infos[key] = TensorInfo(file, dtype, shape, start, end)

  def __getitem__(self, key: str) -> np.ndarray:
    """Reads one tensor into a fresh array (pread: no mapping keeps the file's pages in RSS)."""
    info = self.infos[key]
    fd = self._fds.get(info.file)
    if fd is None:
      fd = self._fds[info.file] = os.open(info.file, os.O_RDONLY)
    out = np.empty(info.shape, info.dtype)
    view, pos, end = memoryview(out.reshape(-1).view(np.uint8)), info.start, info.end
    while pos < end:
      n = os.preadv(fd, [view[pos - info.start :]], pos)
      if n <= 0:
        raise CheckpointError(f"{info.file}: unexpected end of file while reading {key!r}")
      pos += n
    return out

  def __iter__(self) -> Iterator[str]:
    return iter(self.infos)

  def __len__(self) -> int:
    return len(self.infos)

  def shapes(self) -> dict[str, tuple[int, ...]]:
    return {k: v.shape for k, v in self.infos.items()}

  def close(self) -> None:
    for fd in self._fds.values():
      os.close(fd)
    self._fds.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def check_keys(
  expected: Mapping[str, tuple[int, ...]],
  found: Mapping[str, tuple[int, ...]],
  what: str = "checkpoint",
) -> None:
  """Raises CheckpointError naming missing, unexpected and mis-shaped keys (bounded lists)."""
  missing = sorted(set(expected) - set(found))
  unexpected = sorted(set(found) - set(expected))
  misshaped = sorted(
    f"{k}: expected {tuple(expected[k])}, found {tuple(found[k])}"
    for k in set(expected) & set(found)
    if tuple(expected[k]) != tuple(found[k])
  )
  if not (missing or unexpected or misshaped):
    return

  def fmt(name, items):
    if not items:
      return ""
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"\n  {len(items)} {name}: " + ", ".join(items[:MAX_LISTED]) + more

  raise CheckpointError(
    f"{what} does not match the expected layout:"
    + fmt("missing", missing)
    + fmt("unexpected", unexpected)
    + fmt("mis-shaped", misshaped)
  )


def _header_for(items: list[tuple[str, np.dtype, tuple[int, ...]]], metadata=None) -> bytes:
  header, offset = {}, 0
  if metadata:
    header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
  for key, dtype, shape in items:
    nbytes = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    header[key] = {
      "dtype": _NAMES[dtype],
      "shape": list(shape),
      "data_offsets": [offset, offset + nbytes],
    }
    offset += nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)  # align the data to 8 bytes, as the reference writer does
  return struct.pack("<Q", len(raw)) + raw


def write_file(
  path: str | os.PathLike,
  items: list[tuple[str, np.dtype, tuple[int, ...]]],
  get: Callable[[str], np.ndarray],
  metadata: Mapping[str, str] | None = None,
  on_tensor: Callable[[str], None] | None = None,
) -> None:
  """Streams tensors into one safetensors file; `get(key)` is called once per key, in order."""
  path = pathlib.Path(path)
  with open(path, "wb") as f:
    f.write(_header_for(items, metadata))
    for key, dtype, shape in items:
      arr = np.ascontiguousarray(get(key))
      if arr.dtype != dtype or arr.shape != tuple(shape):
        raise CheckpointError(f"{key}: produced {arr.dtype}{arr.shape}, announced {dtype}{shape}")
      f.write(arr.reshape(-1).view(np.uint8).data)
      if on_tensor is not None:
        on_tensor(key)


def save_dict(path: str | os.PathLike, tensors: Mapping[str, np.ndarray], metadata=None) -> None:
  """Writes a dict of arrays to one safetensors file, atomically."""
  items = [(k, np.asarray(v).dtype, np.asarray(v).shape) for k, v in tensors.items()]
  with atomic_path(path) as tmp:
    write_file(tmp, items, lambda k: np.asarray(tensors[k]), metadata)


def plan_shards(items: Iterable[tuple[str, np.dtype, tuple[int, ...]]], max_shard_bytes: int):
  """Greedy split of (key, dtype, shape) items into shards of at most `max_shard_bytes`."""
  shards, current, size = [], [], 0
  for item in items:
    nbytes = item[1].itemsize * int(np.prod(item[2], dtype=np.int64))
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(item)
    size += nbytes
  if current:
    shards.append(current)
  return shards


def write_sharded(
  path: str | os.PathLike,
  items: list[tuple[str, np.dtype, tuple[int, ...]]],
  get: Callable[[str], np.ndarray],
  *,
  max_shard_bytes: int,
  progress: Callable[[int], None] | None = None,
) -> pathlib.Path:
  """Streams tensors into HF-style shards plus `model.safetensors.index.json`, atomically.

  The folder is written under a temporary name and renamed when complete, so a failure leaves
  nothing behind; an existing non-empty folder is refused. `progress(n)` gets the tensor count.
  """
  path = pathlib.Path(path)
  if path.exists() and (not path.is_dir() or any(path.iterdir())):
    raise FileExistsError(f"{path} exists and is not an empty folder; choose a new destination")
  shards = plan_shards(items, max_shard_bytes)
  n, done, weight_map, total = len(shards), 0, {}, 0

  def on_tensor(_):
    nonlocal done
    done += 1
    if progress is not None:
      progress(done)

  with atomic_path(path, is_dir=True) as tmp:
    for i, shard in enumerate(shards):
      name = "model.safetensors" if n == 1 else f"model-{i + 1:05d}-of-{n:05d}.safetensors"
      write_file(tmp / name, shard, get, metadata={"format": "pt"}, on_tensor=on_tensor)
      for key, dt, shape in shard:
        weight_map[key] = name
        total += dt.itemsize * int(np.prod(shape, dtype=np.int64))
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (tmp / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
  return path
