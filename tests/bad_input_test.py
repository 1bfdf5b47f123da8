"""Bad input gets one clear error naming the input and the fix, a non-zero exit, and leaves
nothing behind (issue: a fresh machine ... every bad input named)."""

from __future__ import annotations

import os
import pathlib

import numpy as np
import pytest

from o2a_jax.cli import main
from o2a_jax.io.output_paths import check_output

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "configs" / "o2a.py")


def _run(capsys, *argv) -> tuple[int, str]:
  rc = main(list(argv))
  return rc, capsys.readouterr().err


# --- o2a train: config mistakes are one line, before anything is built -----------------------


@pytest.mark.parametrize(
  "flags,needle",
  [
    (["--config", "/no/such/config.py:model=tiny"], "'/no/such/config.py' does not exist"),
    ([f"--config={CONFIG}:model=huge,stage=2"], "unknown model 'huge'"),
    ([f"--config={CONFIG}:model=tiny,stage=4"], "unknown stage 4"),
    (
      [f"--config={CONFIG}:model=tiny,stage=2", "--config.train.nosuch=3"],
      "unknown config key 'nosuch' in train",
    ),
    (
      [f"--config={CONFIG}:model=tiny,stage=2", "--config.trian.steps=3"],
      "unknown config key 'trian' in the config",
    ),
    ([f"--config={CONFIG}:model=tiny,stage=2", "--config.train.steps=-5"], "must be >= 0"),
  ],
)
def test_train_config_mistakes(tmp_path, capsys, flags, needle):
  workdir = tmp_path / "run"
  rc, err = _run(capsys, "train", *flags, "--workdir", str(workdir))
  assert rc == 2, err
  assert needle in err and "Traceback" not in err, err
  assert len(err.strip().splitlines()) == 1, err
  assert not workdir.exists()


# --- o2a data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "flags,needle",
  [
    (["--frames", "0"], "argument --frames: must be >= 1, got 0"),
    (["--height", "17"], "argument --height: must be >= 16 and a multiple of 16, got 17"),
    (["--clips", "-1"], "argument --clips: must be >= 0, got -1"),
  ],
)
def test_data_synthetic_bad_sizes(tmp_path, capsys, flags, needle):
  out = tmp_path / "data"
  with pytest.raises(SystemExit) as e:
    main(["data", "synthetic", str(out), *flags])
  assert e.value.code == 2
  assert needle in capsys.readouterr().err
  assert not out.exists()


def test_data_build_bad_numbers(tmp_path, capsys):
  csv = tmp_path / "x.csv"
  csv.write_text("")
  for flag in (["--max-frames", "-1"], ["--records-per-shard", "0"]):
    with pytest.raises(SystemExit) as e:
      main(["data", "build", "official", str(csv), str(tmp_path / "out"), *flag])
    assert e.value.code == 2
    assert f"argument {flag[0]}" in capsys.readouterr().err


def test_data_build_empty_csv_writes_nothing(tmp_path, capsys):
  csv = tmp_path / "empty.csv"
  csv.write_text("")
  out = tmp_path / "out"
  rc, err = _run(capsys, "data", "build", "official", str(csv), str(out), "--quiet")
  assert rc == 2
  assert "no usable clip or image pair" in err and str(csv) in err and "nothing was written" in err
  assert not out.exists()


def test_corrupt_dataset_info_is_named(tmp_path):
  from data_pipeline.records import RecordSource

  (tmp_path / "dataset_info.json").write_text("{not json")
  with pytest.raises(ValueError, match=r"dataset_info.json is not a valid dataset_info.json"):
    RecordSource(tmp_path, "clip")


# --- outputs: one rule for existing and unwritable destinations ----------------------------


def test_check_output_rule(tmp_path):
  f = tmp_path / "out.mp4"
  check_output(f, overwrite=False)  # new file: fine
  f.write_bytes(b"x")
  with pytest.raises(FileExistsError, match="pass --overwrite"):
    check_output(f, overwrite=False)
  check_output(f, overwrite=True)
  d = tmp_path / "frames"
  d.mkdir()
  check_output(d, overwrite=False, folder=True)  # an empty folder is fine
  (d / "a.png").write_bytes(b"x")
  with pytest.raises(FileExistsError):
    check_output(d, overwrite=False, folder=True)
  with pytest.raises(ValueError, match="is a file; the output is a folder"):
    check_output(f, overwrite=True, folder=True)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_output_unwritable(tmp_path):
  ro = tmp_path / "ro"
  ro.mkdir()
  ro.chmod(0o555)
  try:
    with pytest.raises(PermissionError, match="is not writable"):
      check_output(ro / "sub" / "out.mp4", overwrite=False)
  finally:
    ro.chmod(0o755)


def test_check_output_unwritable_by_mode(tmp_path, monkeypatch):
  """The same refusal, simulated for root (which os.access lets write anywhere)."""
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path) else real(p, m))
  with pytest.raises(PermissionError, match=f"the folder '{tmp_path}' is not writable"):
    check_output(tmp_path / "new" / "out.gif", overwrite=False)


def test_demo_refuses_existing_output_before_work(tmp_path, capsys):
  out = tmp_path / "demo"
  out.mkdir()
  (out / "result.gif").write_bytes(b"old")
  rc, err = _run(capsys, "demo", "--out", str(out), "--quiet")
  assert rc == 2 and "pass --overwrite" in err
  assert (out / "result.gif").read_bytes() == b"old"
  f = tmp_path / "file"
  f.write_text("x")
  rc, err = _run(capsys, "demo", "--out", str(f), "--quiet")
  assert rc == 2 and "is a file; the output is a folder" in err


# --- poses and weights that would animate silently wrong -----------------------------------


def test_pose_file_without_usable_joints(tmp_path, capsys):
  from o2a_jax.inference.load import read_pose_file
  from o2a_jax.pose import write_keypoints_json

  kp = np.zeros((3, 133, 3))
  kp[..., :2] = 10.0  # positions, but every confidence is 0
  path = tmp_path / "blank.json"
  write_keypoints_json(path, kp, 64, 64)
  with pytest.raises(ValueError, match="blank.json.*none of its 3 frames has a usable body joint"):
    read_pose_file(path)
  out = tmp_path / "poses.mp4"
  rc, err = _run(capsys, "pose", "render", str(path), "--out", str(out))
  assert rc == 2 and "usable body joint" in err
  assert not out.exists()


def test_nan_weights_are_refused():
  import jax.numpy as jnp
  from flax import nnx

  from o2a_jax.inference.load import check_finite

  class Tiny(nnx.Module):
    def __init__(self):
      self.a = nnx.Param(jnp.ones((3,)))
      self.b = nnx.Param(jnp.array([1.0, jnp.nan]))

  with pytest.raises(ValueError, match=r"ckpt: 1 parameter tensor\(s\) hold NaN.*'b'"):
    check_finite(Tiny(), "ckpt")
  m = Tiny()
  m.b[...] = jnp.zeros(2)
  check_finite(m, "ckpt")


# --- --help: every option explained, one spelling per flag ----------------------------------


def test_every_option_has_help():
  import argparse

  from o2a_jax.cli import build_parser

  missing = []

  def walk(parser, name):
    for action in parser._actions:
      if isinstance(action, argparse._SubParsersAction):
        for sub, sp in action.choices.items():
          walk(sp, f"{name} {sub}")
      elif action.help is None and action.dest != "help":
        missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

  walk(build_parser(), "o2a")
  assert not missing, f"options without --help text: {missing}"


def test_help_is_plain_text_and_dtype_spellings_agree(capsys):
  from o2a_jax.cli_types import dtype_name

  with pytest.raises(SystemExit):
    main(["animate", "--help"])
  assert "```" not in capsys.readouterr().out
  assert {dtype_name(s) for s in ("bf16", "bfloat16", "BF16")} == {"bfloat16"}
  assert {dtype_name(s) for s in ("fp32", "float32")} == {"float32"}
  with pytest.raises(SystemExit):
    main(["animate", "--dtype", "fp16", "--ref", "x", "--checkpoint", "x", "--vae", "x"])
  assert "unknown dtype 'fp16'" in capsys.readouterr().err


def test_outputs_get_the_umask_mode_not_0600(tmp_path):
  """Atomic writes go through mkstemp/mkdtemp (0600/0700); the published file must have the
  mode a plain write would (0644 / 0755 under umask 022)."""
  from data_pipeline.records import write_bytes_atomic
  from o2a_jax.io.atomic import atomic_path
  from o2a_jax.io.video import write_video

  old = os.umask(0o022)
  try:
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    write_video(tmp_path / "a.gif", frames)
    write_video(tmp_path / "frames", frames)
    write_bytes_atomic(tmp_path / "b.bin", b"x")
    with atomic_path(tmp_path / "c.json") as tmp:
      tmp.write_text("{}")
  finally:
    os.umask(old)
  for name, mode in (("a.gif", 0o644), ("frames", 0o755), ("b.bin", 0o644), ("c.json", 0o644)):
    assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


@pytest.mark.parametrize(
  "argv",
  [
    ["convert", "import", "SRC", "{ro}/native"],
    ["convert", "export", "SRC", "{ro}/exported", "--max-shard-gb", "1"],
    ["data", "synthetic", "{ro}/data"],
    ["data", "build", "official", "SRC", "{ro}/data"],
    ["train", f"--config={CONFIG}:model=tiny,stage=2", "--workdir", "{ro}/run"],
  ],
)
def test_unwritable_destinations_fail_first(tmp_path, capsys, monkeypatch, argv):
  """An unwritable destination is named before any work (os.access is patched: tests run as
  root, which may write anywhere)."""
  ro = tmp_path / "ro"
  ro.mkdir()
  real = os.access
  monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(ro) else real(p, m))
  src = tmp_path / "missing-src"  # never read: the destination check comes first
  argv = [a.replace("{ro}", str(ro)).replace("SRC", str(src)) for a in argv]
  rc, err = _run(capsys, *argv)
  assert rc == 2 and f"the folder '{ro}' is not writable" in err, err
  assert list(ro.iterdir()) == []


def test_corrupt_json_files_are_named(tmp_path):
  from o2a_jax.convert import load_vae
  from o2a_jax.convert.vae import read_latent_stats
  from o2a_jax.text.tokenizer import load_tokenizer

  vae = tmp_path / "vae"
  vae.mkdir()
  (vae / "config.json").write_text("{broken")
  (vae / "diffusion_pytorch_model.safetensors").write_bytes(b"")
  with pytest.raises(ValueError, match=r"vae/config.json is not valid JSON .*VAE's diffusers"):
    load_vae(vae)
  with pytest.raises(ValueError, match=r"config.json is not valid JSON"):
    read_latent_stats(vae)
  tok = tmp_path / "tok"
  tok.mkdir()
  (tok / "tokenizer.json").write_text('{"version": "1.0", "model": 3}')
  with pytest.raises(ValueError, match=r"tok/tokenizer.json is not a valid tokenizer.json"):
    load_tokenizer(tok)
