"""The TFDS dataset (`data_pipeline.tfds_dataset`) without TensorFlow: built from a dataset
folder (or by `o2a data build --format tfds`), read back equal through tfds.data_source and
tfds.builder_from_directory, and fed to the Grain pipeline with the folder's batches and resume."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipeline import get_data_config, synthetic, tfds_dataset, train_iterator
from data_pipeline.records import KINDS, RecordSource
from o2a_jax.cli import main


def test_tensorflow_is_absent():
  with pytest.raises(ImportError):
    import tensorflow  # noqa: F401


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  d = tmp_path_factory.mktemp("tfds")
  synthetic.write_dataset(d / "folder", clips=6, pairs=3, pool=3, frames=30, height=64, width=80)
  assert main(["data", "tfds", str(d / "folder"), str(d / "tfds")]) == 0
  return d / "folder", d / "tfds"


def test_tfds_dataset_reads_back_equal(datasets):
  import tensorflow_datasets as tfds

  folder, out = datasets
  version = out / tfds_dataset.NAME / tfds_dataset.DATASET_VERSION
  builder = tfds.builder_from_directory(str(version))
  assert builder.info.name == tfds_dataset.NAME and str(builder.info.version) == "1.0.0"
  assert set(builder.info.splits) == set(KINDS)
  assert set(builder.info.features) >= {"record", "id", "kind", "height", "width", "fps"}
  for kind in KINDS:
    a, b = RecordSource(folder, kind), tfds_dataset.open_source(out, kind)
    assert len(a) == len(b) == builder.info.splits[kind].num_examples > 0
    assert all(np.array_equal(a.meta[k], b.meta[k]) for k in a.meta) and set(a.meta) == set(b.meta)
    assert all(a.raw(i) == b.raw(i) for i in range(len(a)))  # example i = record i
  src = tfds.data_source(tfds_dataset.NAME, data_dir=str(out), split="clip")
  ex = src[2]
  assert ex["id"] == b"clip002" and ex["kind"] == b"clip" and ex["n_frames"] == 30


def _cfg(source):
  c = get_data_config(2)
  c.source = str(source)
  c.bucket_scale = 0.125
  c.frames = 5
  c.global_batch = 2
  c.image_ratio = 0.3
  return c


def _same(a, b):
  return all(np.array_equal(x[k], y[k]) for x, y in zip(a, b) for k in x)


def test_pipeline_batches_and_resume_equal_the_folder(datasets):
  folder, out = datasets
  a = [next(it) for it in [train_iterator(_cfg(folder))] for _ in range(4)]
  it = train_iterator(_cfg(out))
  first = [next(it) for _ in range(2)]
  state = it.get_state()
  rest = [next(it) for _ in range(2)]
  assert _same(a, first + rest)
  resumed = train_iterator(_cfg(out))
  resumed.set_state(state)
  assert _same(rest, [next(resumed) for _ in range(2)])


def test_data_build_writes_tfds(tmp_path, capsys):
  from o2a_jax.puppet.world import WorldConfig, write_world

  write_world(
    WorldConfig(seed=1, videos=2, images=1, heldout=1, height=32, width=32, frames=24),
    tmp_path / "world",
    progress=False,
  )
  csv = str(tmp_path / "world" / "train.csv")
  out = tmp_path / "ds"
  assert main(["data", "build", "official", csv, str(out), "--quiet", "--format", "tfds"]) == 0
  assert "wrote the TFDS dataset" in capsys.readouterr().out
  assert len(tfds_dataset.open_source(out, "clip")) == 2
  assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # scratch removed
  assert main(["data", "build", "official", csv, str(out), "--quiet", "--format", "tfds"]) == 2
  assert "--overwrite" in capsys.readouterr().err
