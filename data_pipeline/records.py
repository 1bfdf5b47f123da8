"""Training records on disk: sharded ArrayRecord files of msgpack-serialised samples.

Why ArrayRecord written directly (not through a TFDS builder): `tensorflow-datasets` is not
installed here and would add ~14 packages; TFDS without TensorFlow is only verified for Tensor/Text
features (not for image/video codecs, as TFDS's TensorFlow-free mode documents) and writes records
in hashed order. Our records hold already-encoded bytes (one JPEG/PNG per frame) plus small pose
arrays, which msgpack expresses directly, and we want the record order we wrote (the metadata index
below is positional). Grain reads the files with `grain.sources.ArrayRecordDataSource`, exactly as
it would read TFDS output.

Dataset folder layout (written by `o2a data build` / `data_pipeline.synthetic`):

  <dir>/clips-00000-of-00002.array_record ...   video clips
  <dir>/pairs-00000-of-00001.array_record ...   image pairs (source/target of one person)
  <dir>/pool-00000-of-00001.array_record ...    pose pool for face enhancement
  <dir>/<kind>.meta.npz                         per-record metadata, in record order
  <dir>/dataset_info.json                       counts, shards, build summary

Record kinds (msgpack maps; numpy arrays are msgpack ext type 1 = dtype, shape, raw bytes):

  clip: id, fps, height, width, frames (list of encoded RGB frames), poses (one DWPose-style dict
        per frame, see `o2a_jax.pose.schema`), start_frame / end_frame (training window within the
        stored frames, end exclusive), refimg_index / train_start_index (lists or None, stored-frame
        indices), ocr_boxes (per frame a list of [x1,y1,x2,y2] pixel boxes, or None), caption.
  pair: id, height, width (of the target), source, target (encoded images), source_pose,
        target_pose, same (source and target are the same image), caption.
  pool: id, height, width, candidate (P,134,2) pixels, score (P,134): raw DWPose output.

Metadata (`<kind>.meta.npz`): clip -> height, width, fps, start_frame, end_frame, n_frames;
pair -> height, width; pool -> height, width. The sampler plans epochs from it without reading any
record. Every file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time

import cv2
import msgpack
import numpy as np

from o2a_jax.io.error_text import first_line
from o2a_jax.io.output_paths import publish_mode

KINDS = ("clip", "pair", "pool")
SHARD_PREFIX = {"clip": "clips", "pair": "pairs", "pool": "pool"}
META_FIELDS = {
  "clip": ("height", "width", "fps", "start_frame", "end_frame", "n_frames"),
  "pair": ("height", "width"),
  "pool": ("height", "width"),
}
FORMAT_VERSION = 1
_ND_EXT = 1
# One record per chunk: Grain reads records at random, and larger groups would decompress
# neighbouring records on every read.
_WRITER_OPTIONS = "group_size:1"


class CorruptRecordError(ValueError):
  """A record that cannot be decoded (bad bytes, bad image, malformed pose) or read (a damaged
  or truncated shard); the pipeline skips and counts it."""


class CorruptDataError(ValueError):
  """Too many corrupt records: the pipeline stops (`config.data.max_skipped_fraction`)."""


# --------------------------------------------------------------------------- serialisation


def _default(obj):
  if isinstance(obj, np.ndarray):
    arr = np.ascontiguousarray(obj)
    if arr.dtype == object:
      raise TypeError("object arrays cannot be stored in a record")
    return msgpack.ExtType(_ND_EXT, msgpack.packb([arr.dtype.str, list(arr.shape), arr.tobytes()]))
  if isinstance(obj, np.generic):
    return obj.item()
  raise TypeError(f"cannot serialise {type(obj).__name__} in a record")


def _ext_hook(code, data):
  if code != _ND_EXT:
    raise CorruptRecordError(f"unknown msgpack extension type {code}")
  dtype, shape, raw = msgpack.unpackb(data)
  return np.frombuffer(raw, dtype=np.dtype(dtype)).reshape(shape)


def serialize(record: dict) -> bytes:
  if record.get("kind") not in KINDS:
    raise ValueError(f"record kind must be one of {KINDS}, got {record.get('kind')!r}")
  return msgpack.packb(record, default=_default, use_bin_type=True)


def deserialize(data: bytes) -> dict:
  try:
    rec = msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
  except CorruptRecordError:
    raise
  except Exception as e:  # msgpack raises several types on garbage
    raise CorruptRecordError(f"record is not valid msgpack ({type(e).__name__}: {e})") from e
  if not isinstance(rec, dict) or rec.get("kind") not in KINDS:
    raise CorruptRecordError("record has no valid 'kind' field")
  return rec


def pack_pose(pose: dict) -> dict:
  """Pose dict -> plain dict of numpy arrays (faces may be None)."""
  b = pose["bodies"]
  out = {
    "candidate": np.asarray(b["candidate"]),
    "subset": np.asarray(b["subset"]),
    "score": np.asarray(b["score"]),
    "hands": np.asarray(pose["hands"]),
    "hands_score": np.asarray(pose["hands_score"]),
    "faces": None if pose.get("faces") is None else np.asarray(pose["faces"]),
    "faces_score": None if pose.get("faces") is None else np.asarray(pose["faces_score"]),
  }
  return out


def unpack_pose(packed: dict) -> dict:
  """Inverse of `pack_pose` (arrays copied so callers may modify them)."""
  try:
    faces = packed["faces"]
    return {
      "bodies": {
        "candidate": np.array(packed["candidate"]),
        "subset": np.array(packed["subset"]),
        "score": np.array(packed["score"]),
      },
      "hands": np.array(packed["hands"]),
      "hands_score": np.array(packed["hands_score"]),
      "faces": None if faces is None else np.array(faces),
      "faces_score": None if faces is None else np.array(packed["faces_score"]),
    }
  except (KeyError, TypeError) as e:
    raise CorruptRecordError(f"malformed pose in record ({e})") from e


def encode_image(rgb: np.ndarray, fmt: str = "jpeg", quality: int = 95) -> bytes:
  """uint8 (H,W,3) RGB -> JPEG or PNG bytes."""
  rgb = np.asarray(rgb)
  if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
    raise ValueError(f"encode_image needs uint8 (H,W,3) RGB, got {rgb.dtype} {rgb.shape}")
  bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
  if fmt == "jpeg":
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  elif fmt == "png":
    ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
  else:
    raise ValueError(f"image format must be 'jpeg' or 'png', got {fmt!r}")
  if not ok:
    raise ValueError("image encoding failed")
  return buf.tobytes()


def decode_image(data) -> np.ndarray:
  """Encoded image bytes -> uint8 (H,W,3) RGB; CorruptRecordError if undecodable."""
  arr = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray) else None
  bgr = None if arr is None or not arr.size else cv2.imdecode(arr, cv2.IMREAD_COLOR)
  if bgr is None:
    raise CorruptRecordError("undecodable image bytes in record")
  return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# --------------------------------------------------------------------------- writing


def write_bytes_atomic(path: pathlib.Path, data: bytes) -> None:
  """Writes `data` to `path` through a temporary sibling and a rename (nothing half-written)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    publish_mode(tmp)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise


class DatasetWriter:
  """Writes records of all kinds into a dataset folder, sharded, atomically.

  Shards are written as `.tmp-<prefix>-NNNNN` and renamed to `<prefix>-NNNNN-of-MMMMM.array_record`
  by `close()`, with the metadata and `dataset_info.json`; an interrupted build leaves only
  temporary files (removed by the next build into the folder). Refuses a folder that already holds
  a dataset unless `overwrite`.
  """

  def __init__(self, out_dir, *, records_per_shard: int = 256, overwrite: bool = False):
    from array_record.python.array_record_module import ArrayRecordWriter

    self._writer_cls = ArrayRecordWriter
    self.dir = pathlib.Path(out_dir)
    self._created = not self.dir.exists()
    self.dir.mkdir(parents=True, exist_ok=True)
    existing = sorted(self.dir.glob("*.array_record")) + sorted(self.dir.glob("dataset_info.json"))
    if existing and not overwrite:
      raise FileExistsError(
        f"{self.dir} already holds a dataset ({existing[0].name}); pass --overwrite or choose "
        "another folder"
      )
    for stale in list(self.dir.glob(".tmp-*")) + (existing if overwrite else []):
      stale.unlink()
    for meta in self.dir.glob("*.meta.npz"):
      if overwrite:
        meta.unlink()
    if records_per_shard < 1:
      raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
    self.records_per_shard = records_per_shard
    self._open = {}  # kind -> (writer, tmp path, count in shard)
    self._tmp_shards = {k: [] for k in KINDS}
    self._shard_counts = {k: [] for k in KINDS}
    self._meta = {k: {f: [] for f in META_FIELDS[k]} for k in KINDS}
    self.counts = dict.fromkeys(KINDS, 0)

  def add(self, record: dict) -> None:
    kind = record.get("kind")
    data = serialize(record)
    extra = {"n_frames": len(record["frames"])} if kind == "clip" else {}
    meta = {f: extra[f] if f in extra else record[f] for f in META_FIELDS[kind]}
    writer, tmp, n = self._open.get(kind, (None, None, 0))
    if writer is None or n >= self.records_per_shard:
      if writer is not None:
        writer.close()
      tmp = self.dir / f".tmp-{SHARD_PREFIX[kind]}-{len(self._tmp_shards[kind]):05d}"
      writer = self._writer_cls(str(tmp), _WRITER_OPTIONS)
      self._tmp_shards[kind].append(tmp)
      self._shard_counts[kind].append(0)
      n = 0
    writer.write(data)
    self._open[kind] = (writer, tmp, n + 1)
    self._shard_counts[kind][-1] += 1
    for f, v in meta.items():
      self._meta[kind][f].append(v)
    self.counts[kind] += 1

  def abort(self) -> None:
    """Drops everything written so far (and the folder, if this writer created it)."""
    for writer, _, _ in self._open.values():
      writer.close()
    self._open = {}
    for tmps in self._tmp_shards.values():
      for tmp in tmps:
        tmp.unlink(missing_ok=True)
    self._tmp_shards = {k: [] for k in KINDS}
    if self._created and self.dir.is_dir() and not any(self.dir.iterdir()):
      self.dir.rmdir()

  def close(self, summary: dict | None = None) -> dict:
    for writer, _, _ in self._open.values():
      writer.close()
    self._open = {}
    shards = {}
    for kind in KINDS:
      tmps = self._tmp_shards[kind]
      names = []
      for i, tmp in enumerate(tmps):
        name = f"{SHARD_PREFIX[kind]}-{i:05d}-of-{len(tmps):05d}.array_record"
        os.replace(tmp, self.dir / name)
        names.append(name)
      shards[kind] = names
      if tmps:
        dtype = {"fps": np.float64}
        arrays = {
          f: np.asarray(v, dtype=dtype.get(f, np.int64)) for f, v in self._meta[kind].items()
        }
        import io

        buf = io.BytesIO()
        np.savez(buf, **arrays)
        write_bytes_atomic(self.dir / f"{SHARD_PREFIX[kind]}.meta.npz", buf.getvalue())
    info = {
      "format": "o2a-data",
      "version": FORMAT_VERSION,
      "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
      "counts": self.counts,
      "shards": shards,
      "shard_counts": self._shard_counts,
      "summary": summary or {},
    }
    write_bytes_atomic(self.dir / "dataset_info.json", (json.dumps(info, indent=1) + "\n").encode())
    return info


# --------------------------------------------------------------------------- reading


class RecordSource:
  """Random access to one kind of record in a dataset folder (raw bytes) plus its metadata.

  Picklable (Grain workers re-open the files); `read(i)` returns the decoded dict.
  """

  def __init__(self, data_dir, kind: str):
    self.dir = pathlib.Path(data_dir)
    self.kind = kind
    info_path = self.dir / "dataset_info.json"
    if not info_path.is_file():
      raise FileNotFoundError(
        f"{self.dir} is not a training dataset (no dataset_info.json); build one with "
        "`o2a data build`"
      )
    try:
      info = json.loads(info_path.read_text())
      shard_names = info["shards"].get(kind, [])
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as e:
      raise ValueError(
        f"{info_path} is not a valid dataset_info.json ({type(e).__name__}: {e}); rebuild the "
        "dataset with `o2a data build`"
      ) from None
    self.paths = [str(self.dir / n) for n in shard_names]
    counts = (info.get("shard_counts") or {}).get(kind)  # absent in datasets built before it
    self.shard_counts = list(counts) if counts and len(counts) == len(self.paths) else None
    self.meta = {}
    if self.paths:
      with np.load(self.dir / f"{SHARD_PREFIX[kind]}.meta.npz") as z:
        self.meta = {k: z[k] for k in z.files}
      n = len(next(iter(self.meta.values())))
      if n != info["counts"][kind]:
        raise ValueError(f"{self.dir}: {kind} metadata has {n} rows, dataset_info says "
                         f"{info['counts'][kind]}; rebuild the dataset")  # fmt: skip
    self._source = None

  def __len__(self) -> int:
    return 0 if not self.meta else len(next(iter(self.meta.values())))

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None  # file handles are re-opened in each worker
    return state

  def _open_shards(self) -> list:
    """Per shard: [start, count, source or None, error]; a shard that cannot be opened (e.g.
    truncated) stays in the table so that its records are skipped, not the whole dataset."""
    import grain

    opened = []
    for path in self.paths:
      try:
        src = grain.sources.ArrayRecordDataSource([path])
        opened.append([src, len(src), None])
      except Exception as e:  # the reader's own errors name no file
        opened.append([None, None, first_line(e)])
    counts = self.shard_counts
    if counts is None:  # older datasets: infer the unreadable shards' counts
      known = [n for _, n, _ in opened if n is not None]
      missing = [i for i, (_, n, _) in enumerate(opened) if n is None]
      left = len(self) - sum(known)
      per = max(known) if known else -(-len(self) // max(len(self.paths), 1))
      counts = [n for _, n, _ in opened]
      for j, i in enumerate(missing):
        counts[i] = left if j == len(missing) - 1 else min(per, left)
        left -= counts[i]
    table, start = [], 0
    for (src, _, err), n in zip(opened, counts, strict=True):
      table.append([start, int(n), src, err])
      start += int(n)
    return table

  def raw(self, index: int) -> bytes:
    import bisect

    if self._source is None:
      self._source = self._open_shards()
      self._starts = [row[0] for row in self._source]
    index = int(index)
    i = max(bisect.bisect_right(self._starts, index) - 1, 0)
    start, _, src, err = self._source[i]
    name = pathlib.Path(self.paths[i]).name
    if src is None:
      raise CorruptRecordError(f"shard {name} cannot be opened ({err}); record {index} skipped")
    try:
      return src[index - start]
    except Exception as e:
      raise CorruptRecordError(
        f"record {index - start} of shard {name} cannot be read ({first_line(e)})"
      ) from None

  def read(self, index: int) -> dict:
    rec = deserialize(self.raw(index))
    if rec["kind"] != self.kind:
      raise CorruptRecordError(f"record {index} of kind {rec['kind']!r} in the {self.kind} shards")
    return rec
