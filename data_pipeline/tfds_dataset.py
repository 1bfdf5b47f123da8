"""The training data as a TFDS dataset (ArrayRecord files), built and read without TensorFlow.

`tensorflow-datasets` (the `tfds` extra) installs without TensorFlow and reads ArrayRecord
through `tfds.data_source`; TPU-pod users can name the dataset like any other TFDS one:

  o2a data build official CSV OUT --format tfds        # OUT/o2a_animation/1.0.0/
  tfds.builder_from_directory("OUT/o2a_animation/1.0.0").as_data_source(split="clip")

Dataset `o2a_animation`, version 1.0.0, splits `clip`, `pair` and `pool` (the record kinds of
`data_pipeline.records`; a kind with no records has no split). Features of one example:
  record        bytes: the record as `records.serialize` writes it (msgpack; its frames and image
                pairs encoded as JPEG/PNG bytes, its poses packed), decoded in the Grain pipeline,
                since TFDS's own image features would need TensorFlow to decode
  id, kind      text
  height, width, fps, start_frame, end_frame, n_frames   the record's metadata (0 where a kind
                has none)
The same metadata, per split as columns, is in the dataset's `metadata.json` (TFDS
MetadataDict), so the epoch planner reads it without touching the records. Example i of a split
is record i of the folder it was built from (shuffling is off): sampling, determinism and exact
resume are the folder format's.

`TfdsRecordSource` gives the interface of `records.RecordSource` over such a dataset.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from data_pipeline.records import KINDS, META_FIELDS, CorruptRecordError, RecordSource, deserialize

NAME = "o2a_animation"
DATASET_VERSION = "1.0.0"
_ALL_META = META_FIELDS["clip"]  # the other kinds' metadata fields are a subset of these


def _tfds():
  try:
    import tensorflow_datasets as tfds
  except ImportError:
    raise ImportError(
      'TFDS datasets need tensorflow-datasets (no TensorFlow): pip install "o2a-jax[tfds]"'
    ) from None
  return tfds


@functools.cache  # TFDS registers a builder class by name, once per process
def builder_class():
  """The `GeneratorBasedBuilder` (defined on first use: tensorflow-datasets is optional)."""
  tfds = _tfds()

  class O2aAnimation(tfds.core.GeneratorBasedBuilder):
    """One-to-All training records (clips, image pairs, pose pool) from an `o2a data build`
    folder (`records_dir`)."""

    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES = {DATASET_VERSION: "Clip, image-pair and pose-pool records of `o2a data build`."}
    disable_shuffling = True  # example i = record i of the source folder

    def __init__(self, *, records_dir=None, **kwargs):
      self._records_dir = records_dir
      super().__init__(**kwargs)

    def _info(self):
      f = tfds.features
      scalars = {k: f.Scalar(np.float32 if k == "fps" else np.int64) for k in _ALL_META}
      return self.dataset_info_from_configs(
        description=__doc__,
        features=f.FeaturesDict(
          {
            "record": f.Tensor(shape=(), dtype=np.object_),
            "id": f.Text(),
            "kind": f.Text(),
            **scalars,
          }  # fmt: skip
        ),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # the info's flag is what the writer reads
      )

    def _split_generators(self, dl_manager):
      if self._records_dir is None:
        raise ValueError("building o2a_animation needs records_dir (an `o2a data build` folder)")
      splits = {}
      for kind in KINDS:
        src = RecordSource(self._records_dir, kind)
        if len(src):
          self.info.metadata[kind] = {k: src.meta[k].tolist() for k in META_FIELDS[kind]}
          splits[kind] = self._generate_examples(src)
      return splits

    def _generate_examples(self, src: RecordSource):
      for i in range(len(src)):
        raw = src.raw(i)
        rec = deserialize(raw)
        meta = {k: rec.get(k, 0) or 0 for k in _ALL_META}
        if "n_frames" not in rec and "frames" in rec:
          meta["n_frames"] = len(rec["frames"])
        yield i, {"record": raw, "id": str(rec.get("id", "")), "kind": rec["kind"], **meta}

  return O2aAnimation


def build(records_dir, data_dir) -> pathlib.Path:
  """Writes the TFDS dataset of an `o2a data build` folder under `data_dir`; returns its
  version folder (`data_dir/o2a_animation/1.0.0`)."""
  builder = builder_class()(
    records_dir=str(records_dir), data_dir=str(data_dir), file_format="array_record"
  )
  builder.download_and_prepare()
  return pathlib.Path(builder.data_dir)


def version_dir(path) -> pathlib.Path | None:
  """The TFDS version folder at `path` (itself, or the one dataset version below it), or None
  when `path` is not a TFDS dataset."""
  path = pathlib.Path(path)
  if (path / "features.json").is_file() and (path / "dataset_info.json").is_file():
    return path
  found = sorted(p.parent for p in path.glob(f"{NAME}/*/features.json"))
  if len(found) > 1:
    raise ValueError(f"{path} holds several {NAME} versions {[p.name for p in found]}; give one")
  return found[0] if found else None


class TfdsRecordSource:
  """`records.RecordSource`'s interface (meta, len, raw, read) over one split of the dataset.

  Picklable: each Grain worker opens its own `tfds.data_source`.
  """

  def __init__(self, path, kind: str):
    self.dir = version_dir(path)
    if self.dir is None:
      raise FileNotFoundError(f"{path} is not a TFDS {NAME} dataset (no features.json)")
    self.kind = kind
    import json

    meta_file = self.dir / "metadata.json"
    stored = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    cols = stored.get(kind) or {}
    dtypes = {"fps": np.float64}
    self.meta = {k: np.asarray(v, dtypes.get(k, np.int64)) for k, v in cols.items()}
    self._source = None

  def __len__(self) -> int:
    return 0 if not self.meta else len(next(iter(self.meta.values())))

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_source"] = None
    return state

  def raw(self, index: int) -> bytes:
    if self._source is None:
      builder = _tfds().builder_from_directory(str(self.dir))
      self._source = builder.as_data_source(split=self.kind)
    try:
      return bytes(self._source[int(index)]["record"])
    except Exception as e:
      raise CorruptRecordError(f"{self.kind} example {index} cannot be read ({e})") from None

  def read(self, index: int) -> dict:
    rec = deserialize(self.raw(index))
    if rec["kind"] != self.kind:
      raise CorruptRecordError(f"example {index} of kind {rec['kind']!r} in the {self.kind} split")
    return rec


def open_source(path, kind: str):
  """The record source of `path`: a TFDS dataset (`TfdsRecordSource`) or a folder
  (`RecordSource`)."""
  if version_dir(path) is not None:
    return TfdsRecordSource(path, kind)
  return RecordSource(path, kind)
