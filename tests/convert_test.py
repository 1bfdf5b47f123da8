"""Conversion between the official safetensors layout and o2a_jax: round trips, strict errors,
native Orbax checkpoints across meshes, and the `o2a convert` command line."""

import json
import shutil

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from o2a_jax import checkpoint, cli, sharding
from o2a_jax.convert import load_official, native, official_state_dict, save_official
from o2a_jax.convert.official import param_shapes
from o2a_jax.io import safetensors as sio


@pytest.fixture(scope="module")
def tiny(fixtures_dir):
  return fixtures_dir / "model_tiny" / "model.safetensors"


@pytest.fixture(scope="module")
def reference(tiny):
  with sio.TensorSource(tiny) as src:
    return {k: np.array(src[k]) for k in src}


@pytest.fixture(scope="module")
def bf16_file(tmp_path_factory, reference):
  path = tmp_path_factory.mktemp("bf16") / "model.safetensors"
  sio.save_dict(path, {k: v.astype(ml_dtypes.bfloat16) for k, v in reference.items()})
  return path


def _assert_bit_identical(path, reference, dtype=None):
  with sio.TensorSource(path) as src:
    assert set(src) == set(reference)
    for k, v in reference.items():
      want = v if dtype is None else v.astype(dtype)
      got = src[k]
      assert got.dtype == want.dtype and got.shape == want.shape, k
      assert got.tobytes() == want.tobytes(), k


def test_float32_round_trip_is_bit_identical(tiny, reference, tmp_path):
  model = load_official(tiny)
  out = save_official(model, tmp_path / "out", max_shard_bytes=4 * 2**20)
  index = json.loads((out / "model.safetensors.index.json").read_text())
  shards = sorted(p.name for p in out.glob("*.safetensors"))
  assert len(shards) > 1 and set(index["weight_map"].values()) == set(shards)
  assert set(index["weight_map"]) == set(reference)
  _assert_bit_identical(out, reference)
  sd = official_state_dict(model)
  assert all(sd[k].tobytes() == reference[k].tobytes() for k in reference)


def test_bfloat16_round_trip_is_bit_identical(bf16_file, reference, tmp_path):
  want = {k: v.astype(ml_dtypes.bfloat16) for k, v in reference.items()}
  model = load_official(bf16_file, dtype=jnp.bfloat16)
  assert model.blocks.attn1.to_q.kernel.get_value().dtype == jnp.bfloat16
  _assert_bit_identical(save_official(model, tmp_path / "a"), want)
  # bf16 in, float32 model, bf16 out: the widening is exact, so still bit-identical.
  model = load_official(bf16_file, dtype=jnp.float32)
  _assert_bit_identical(save_official(model, tmp_path / "b", dtype=jnp.bfloat16), want)


def _write_variant(tmp_path, reference, drop=(), add=None, reshape=None):
  tensors = {k: v for k, v in reference.items() if k not in drop}
  if add:
    tensors.update(add)
  if reshape:
    tensors[reshape] = np.zeros((3,) + reference[reshape].shape, np.float32)
  folder = tmp_path / "ckpt"
  folder.mkdir()
  items = list(tensors.items())
  # Two shards, as a sharded release would be.
  sio.save_dict(folder / "a.safetensors", dict(items[: len(items) // 2]))
  sio.save_dict(folder / "b.safetensors", dict(items[len(items) // 2 :]))
  return folder


@pytest.mark.parametrize(
  "variant, message",
  [
    (dict(drop=("blocks.1.attn1.to_q.weight", "proj_out.bias")), "2 missing: blocks.1.attn1.to_q"),
    (dict(add={"blocks.0.extra.weight": np.zeros(3, np.float32)}), "1 unexpected: blocks.0.extra"),
    (dict(reshape="blocks.2.ffn.net.2.bias"), "1 mis-shaped: blocks.2.ffn.net.2.bias"),
    (dict(drop=("patch_embedding.weight",)), "patch_embedding.weight"),
  ],
)
def test_bad_keys_are_named(tmp_path, reference, variant, message):
  folder = _write_variant(tmp_path, reference, **variant)
  with pytest.raises(ValueError, match=message.replace(".", r"\.")):
    load_official(folder)


def test_missing_key_list_is_bounded(tmp_path, reference):
  drop = [
    k
    for k in reference
    if k.startswith(("blocks.1.", "blocks.2.")) and not k.endswith("scale_shift_table")
  ]
  folder = _write_variant(tmp_path, reference, drop=drop)
  with pytest.raises(ValueError, match=r"and \d+ more") as err:
    load_official(folder)
  assert len(str(err.value)) < 3000


def test_pickles_and_garbage_are_refused(tmp_path):
  pth = tmp_path / "model.pth"
  pth.write_bytes(b"\x80\x04not really a pickle")
  with pytest.raises(ValueError, match=r"(?s)never unpickles.*safetensors"):
    load_official(pth)
  folder = tmp_path / "folder"
  folder.mkdir()
  (folder / "pytorch_model.bin").write_bytes(b"junk")
  with pytest.raises(ValueError, match="pickle"):
    load_official(folder)
  bad = tmp_path / "bad.safetensors"
  bad.write_bytes(b"\xff" * 64)
  with pytest.raises(ValueError, match="not a valid safetensors"):
    load_official(bad)
  with pytest.raises(ValueError, match="does not exist"):
    load_official(tmp_path / "nope")


def test_truncated_file_is_refused(tmp_path, tiny):
  data = tiny.read_bytes()
  cut = tmp_path / "cut.safetensors"
  cut.write_bytes(data[: len(data) // 2])
  with pytest.raises(ValueError, match="inconsistent offsets"):
    load_official(cut)


def test_save_refuses_existing_folder_and_leaves_nothing_on_failure(tiny, tmp_path, monkeypatch):
  model = load_official(tiny)
  (tmp_path / "full").mkdir()
  (tmp_path / "full" / "x").write_text("keep")
  with pytest.raises(FileExistsError):
    save_official(model, tmp_path / "full")
  with pytest.raises(ValueError, match="export dtype"):
    save_official(model, tmp_path / "bad", dtype=jnp.int8)
  real_write, calls = sio.write_file, []

  def failing_write(*a, **k):  # the disk fills up while the second shard is written
    calls.append(1)
    if len(calls) == 2:
      raise OSError("No space left on device")
    return real_write(*a, **k)

  monkeypatch.setattr(sio, "write_file", failing_write)
  with pytest.raises(OSError):
    save_official(model, tmp_path / "partial", max_shard_bytes=4 * 2**20)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]


def test_native_checkpoint_restores_onto_another_mesh(tiny, reference, tmp_path):
  cfg = native.import_official(tiny, tmp_path / "native")
  assert cfg.num_layers == 3 and cfg.pose_layers == 2 and cfg.ref_layers == 2
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # scratch removed
  with jax.set_mesh(sharding.make_mesh((1, 4, 1, 2))):
    model = checkpoint.load_native(tmp_path / "native")
    kernel = model.blocks.ffn_in.kernel.get_value()
    assert kernel.sharding.spec == jax.P(None, "fsdp", "tensor")
    checkpoint.save_native(model, tmp_path / "resaved")
  with jax.set_mesh(sharding.make_mesh((1, 2, 1, 4))):
    model = checkpoint.load_native(tmp_path / "resaved")
    assert model.blocks.attn1.to_q.kernel.get_value().sharding.spec == jax.P(None, "fsdp", "tensor")
  sd = official_state_dict(model)
  assert all(sd[k].tobytes() == reference[k].tobytes() for k in reference)
  with pytest.raises(FileExistsError):
    checkpoint.save_native(model, tmp_path / "resaved")
  with pytest.raises(ValueError, match="not a native"):
    checkpoint.load_native(tmp_path)
  # Damaged parameter files: one line naming the checkpoint and what to do.
  for f in (tmp_path / "resaved" / "params").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"\0damaged")
  with pytest.raises(ValueError, match=r"native checkpoint .*resaved.*parameters cannot be read"):
    checkpoint.load_native(tmp_path / "resaved")


def test_import_writes_each_leaf_in_slices(tiny, reference, tmp_path, monkeypatch):
  """The streamed writer stays on Orbax's write path and writes leaves slice by slice, exactly."""
  made = []

  class Spy(checkpoint._SlicedNumpyHandler):
    def __init__(self):
      super().__init__()
      made.append(self)

  monkeypatch.setattr(checkpoint, "_SlicedNumpyHandler", Spy)
  monkeypatch.setattr(checkpoint, "_SLICE_BYTES", 4096)  # many slices per stacked leaf
  native.import_official(tiny, tmp_path / "native")
  leaves = len(param_shapes(checkpoint.load_native(tmp_path / "native")))
  assert len(made) == 1 and made[0].slices_written > 2 * leaves
  native.export_native(tmp_path / "native", tmp_path / "out")
  _assert_bit_identical(tmp_path / "out", reference)


def test_cli_import_export_round_trip(tiny, reference, tmp_path, capsys):
  assert cli.main(["convert", "import", str(tiny), str(tmp_path / "native")]) == 0
  assert cli.main(["convert", "export", str(tmp_path / "native"), str(tmp_path / "out")]) == 0
  _assert_bit_identical(tmp_path / "out", reference)
  assert (
    cli.main(
      ["convert", "export", str(tmp_path / "native"), str(tmp_path / "out16"), "--dtype", "bf16"]
    )
    == 0
  )
  _assert_bit_identical(tmp_path / "out16", reference, dtype=ml_dtypes.bfloat16)
  capsys.readouterr()
  assert cli.main(["convert", "import", str(tmp_path / "nope"), str(tmp_path / "x")]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert not (tmp_path / "x").exists()
  shutil.rmtree(tmp_path / "native")


def test_cli_help_everywhere(capsys):
  for argv in (
    ["--help"],
    ["convert", "--help"],
    ["convert", "import", "--help"],
    ["convert", "export", "--help"],
    ["demo", "--help"],
  ):
    with pytest.raises(SystemExit) as e:
      cli.main(argv)
    assert e.value.code == 0
  assert "export" in capsys.readouterr().out
