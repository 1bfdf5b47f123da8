"""Pose files: the official per-video `.npy` pose files and a JSON format for keypoints.

Official `.npy` files (read only)
---------------------------------
The official data pipeline stores one `<video>_pose.npy` per video (and `<image>_pose.npy` per
image): `np.save` of a list with one DWPose-style dict per frame, i.e. a pickled object array.
`_raw.npy` pose-pool files hold raw DWPose detector output instead (`{"candidate": (1,134,2) pixels,
"score": (1,134)}` per frame; convert with `from_dwpose_raw`). `read_official_npy` reads both
without running arbitrary pickle code: only numpy arrays, dtypes, scalars and plain containers may
appear in the file.

JSON (read and write)
---------------------
One UTF-8 JSON object:

    {
      "format": "o2a-pose",
      "version": 1,
      "kind": "coco_wholebody",      # or "dwpose"
      "width": 480,                  # image size the keypoints refer to (pixels)
      "height": 640,
      "frames": [...]                # one entry per frame
    }

- kind "coco_wholebody": each frame is a list of 133 `[x, y, score]` triples, COCO-WholeBody order,
  x and y in pixels of the width x height image (what a whole-body estimator such as ViTPose
  returns; the input of `from_coco_wholebody` and `retarget_to_reference`).
- kind "dwpose": each frame is a DWPose-style pose dict with normalised coordinates (the fields of
  `o2a_jax.pose.schema`, nested lists; `faces`/`faces_score` may be null).

Files are written atomically (temporary file + rename), so a crash never leaves a half-written file.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from o2a_jax.io.output_paths import publish_mode
from o2a_jax.pose.coco import check_kp133
from o2a_jax.pose.schema import as_pose

FORMAT = "o2a-pose"
VERSION = 1
KINDS = ("coco_wholebody", "dwpose")

# (module, name) pairs a pickled numpy object array legitimately refers to.
_NUMPY_GLOBALS = {
  ("numpy", "ndarray"),
  ("numpy", "dtype"),
  ("numpy.core.multiarray", "_reconstruct"),
  ("numpy._core.multiarray", "_reconstruct"),
  ("numpy.core.multiarray", "scalar"),
  ("numpy._core.multiarray", "scalar"),
  ("numpy.core.numeric", "_frombuffer"),
  ("numpy._core.numeric", "_frombuffer"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that resolves only numpy array machinery (no code execution from the file)."""

  def find_class(self, module, name):
    if (module, name) not in _NUMPY_GLOBALS:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    if module.startswith("numpy.core.") and hasattr(np, "_core"):
      module = "numpy._core." + module[len("numpy.core.") :]  # numpy>=2 location, no warning
    return super().find_class(module, name)


def _load_object_npy(path: Path):
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
      else:
        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except ValueError as e:
      raise ValueError(f"{path}: not a .npy file ({e})") from e
    if not dtype.hasobject:
      raise ValueError(
        f"{path}: holds a plain {dtype} array of shape {shape}, not per-frame pose dicts; "
        "raw keypoint arrays go through from_coco_wholebody or the JSON format"
      )
    try:
      return _NumpyOnlyUnpickler(io.BytesIO(f.read())).load()
    except (pickle.UnpicklingError, EOFError, AttributeError, ImportError) as e:
      raise ValueError(f"{path}: not an official pose file ({e})") from e


def from_dwpose_raw(raw, height: int, width: int) -> dict:
  """Raw DWPose detector output (`_raw.npy` entry) -> pose dict (official `build_pose_dict`).

  `raw` = {"candidate": (P,134,2) pixels, "score": (P,134)}; the first person is used. Joints with
  score <= 0.3 get subset -1; hand and face points with score < 0.3 get coordinates -1, as
  officially.
  """
  if not isinstance(raw, Mapping) or "candidate" not in raw or "score" not in raw:
    raise ValueError("raw DWPose output must be a dict with 'candidate' and 'score'")
  cand = np.array(raw["candidate"], dtype=np.float64)
  score = np.array(raw["score"], dtype=np.float64)
  if cand.ndim != 3 or cand.shape[1:] != (134, 2) or score.shape != cand.shape[:2] or not len(cand):
    raise ValueError(
      f"raw DWPose output: 'candidate' has shape {cand.shape} and 'score' {score.shape}; "
      "expected (P,134,2) and (P,134) with P >= 1"
    )
  cand, score = cand[:1].copy(), score[:1].copy()
  cand[..., 0] /= float(width)
  cand[..., 1] /= float(height)
  subset = np.where(score[:, :18] > 0.3, np.arange(18, dtype=np.float64), -1.0)
  body = cand[0, :18].copy()  # taken before masking: the body keeps its coordinates (official)
  cand[score < 0.3] = -1
  return {
    "bodies": {"candidate": body, "subset": subset, "score": score[:, :18]},
    "hands": np.concatenate([cand[:, 92:113], cand[:, 113:]]),
    "hands_score": np.concatenate([score[:, 92:113], score[:, 113:]]),
    "faces": cand[:, 24:92],
    "faces_score": score[:, 24:92],
  }


def read_official_npy(path) -> list:
  """Reads an official `_pose.npy` (pose dicts, checked) or `_raw.npy` (raw dicts, as stored).

  Raises ValueError if the file is not an object array of such dicts or refers to anything but numpy
  array machinery.
  """
  path = Path(path)
  obj = _load_object_npy(path)
  if isinstance(obj, np.ndarray):
    items = obj.tolist() if obj.ndim else obj.item()
  else:
    items = obj
  if isinstance(items, Mapping):
    items = [items]
  if not isinstance(items, list) or not items:
    raise ValueError(f"{path}: expected a non-empty list of per-frame pose dicts")
  if all(isinstance(p, Mapping) and "candidate" in p and "bodies" not in p for p in items):
    return items  # raw DWPose detector output (a `_raw.npy` pose pool file)
  return [as_pose(p, f"{path.name}[{i}]") for i, p in enumerate(items)]


def _atomic_write_text(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
  try:
    with os.fdopen(fd, "w", encoding="utf-8") as f:
      f.write(text)
    publish_mode(tmp)
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def _listify(pose: dict) -> dict:
  def lst(a):
    return None if a is None else np.asarray(a, dtype=np.float64).tolist()

  b = pose["bodies"]
  return {
    "bodies": {k: lst(b[k]) for k in ("candidate", "subset", "score")},
    **{k: lst(pose[k]) for k in ("hands", "hands_score", "faces", "faces_score")},
  }


def _check_size(width, height, where: str) -> tuple[int, int]:
  ok = all(
    isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in (width, height)
  )
  if not ok:
    raise ValueError(f"{where}: width and height must be positive integers, got {width}, {height}")
  return int(width), int(height)


def write_keypoints_json(path, frames, width: int, height: int) -> None:
  """Writes (N,133,3) (or one (133,3)) COCO-WholeBody pixel keypoints as kind coco_wholebody."""
  arr = np.asarray(frames, dtype=np.float64)
  arr = check_kp133(arr[None] if arr.ndim == 2 else arr, "frames", frames=True)
  width, height = _check_size(width, height, "write_keypoints_json")
  doc = {"format": FORMAT, "version": VERSION, "kind": "coco_wholebody", "width": width,
         "height": height, "frames": arr.tolist()}  # fmt: skip
  _atomic_write_text(Path(path), json.dumps(doc))


def write_poses_json(path, poses, width: int, height: int) -> None:
  """Writes a list of DWPose-style pose dicts (normalised coordinates) as kind dwpose."""
  if isinstance(poses, Mapping):
    poses = [poses]
  checked = [as_pose(p, f"poses[{i}]") for i, p in enumerate(poses)]
  width, height = _check_size(width, height, "write_poses_json")
  doc = {"format": FORMAT, "version": VERSION, "kind": "dwpose", "width": width, "height": height,
         "frames": [_listify(p) for p in checked]}  # fmt: skip
  _atomic_write_text(Path(path), json.dumps(doc))


def _read_doc(path: Path, kind: str) -> dict:
  try:
    doc = json.loads(path.read_text(encoding="utf-8"))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if not isinstance(doc, dict) or doc.get("format") != FORMAT:
    raise ValueError(f'{path}: not an {FORMAT} file (missing "format": "{FORMAT}")')
  if doc.get("version") != VERSION:
    raise ValueError(
      f"{path}: unsupported version {doc.get('version')!r}; this reader knows {VERSION}"
    )
  if doc.get("kind") != kind:
    raise ValueError(
      f"{path}: holds kind {doc.get('kind')!r}, expected {kind!r} "
      f"(use read_{'poses' if doc.get('kind') == 'dwpose' else 'keypoints'}_json)"
    )
  for key in ("width", "height", "frames"):
    if key not in doc:
      raise ValueError(f"{path}: missing field {key!r}")
  _check_size(doc["width"], doc["height"], str(path))
  if not isinstance(doc["frames"], list) or not doc["frames"]:
    raise ValueError(f"{path}: field 'frames' must be a non-empty list")
  return doc


def read_keypoints_json(path) -> tuple[np.ndarray, int, int]:
  """Reads kind coco_wholebody: returns (frames (N,133,3) float64, width, height)."""
  path = Path(path)
  doc = _read_doc(path, "coco_wholebody")
  try:
    frames = check_kp133(doc["frames"], f"{path}: frames", frames=True)
  except ValueError as e:
    raise ValueError(str(e)) from None
  return frames, int(doc["width"]), int(doc["height"])


def read_poses_json(path) -> tuple[list[dict], int, int]:
  """Reads kind dwpose: returns (list of checked pose dicts, width, height)."""
  path = Path(path)
  doc = _read_doc(path, "dwpose")
  poses = [as_pose(p, f"{path.name}: frames[{i}]") for i, p in enumerate(doc["frames"])]
  return poses, int(doc["width"]), int(doc["height"])


__all__ = [
  "from_dwpose_raw",
  "read_keypoints_json",
  "read_official_npy",
  "read_poses_json",
  "write_keypoints_json",
  "write_poses_json",
]
