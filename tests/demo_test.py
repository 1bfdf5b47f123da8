"""Puppet world end to end: generator -> `o2a data build` -> Grain pipeline -> train step (the
loss falls), the evaluation metrics, and `o2a demo` with the shipped weights."""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import pytest

from o2a_jax.puppet import evaluate as E


def test_shipped_toy_is_found():
  """The toy's weights ship in the repository: a wrong path must fail here, not skip the demo."""
  assert E.MODEL_DIR.is_dir() and E.VAE_DIR.is_dir(), (E.MODEL_DIR, E.VAE_DIR)


def test_puppet_training_loss_falls(tmp_path):
  """A small puppet world through the official layout, `o2a data build`, the Grain pipeline and
  the jitted train step of the `puppet` config (stage 2): on one batch with the step's random
  draws held fixed, the loss falls."""
  import data_pipeline
  from o2a_jax import sharding
  from o2a_jax.cli import main
  from o2a_jax.config_lib import load_config_file
  from o2a_jax.puppet.world import WorldConfig, write_world
  from o2a_jax.train import trainer

  world = tmp_path / "world"
  write_world(
    WorldConfig(seed=3, videos=3, images=1, heldout=1, height=32, width=32, frames=40),
    world,
    progress=False,
  )
  data = tmp_path / "data"
  assert main(["data", "build", "official", str(world / "train.csv"), str(data), "--quiet"]) == 0
  root = pathlib.Path(__file__).resolve().parents[1]
  c = load_config_file(
    root / "configs" / "o2a.py", f"model=tiny,small,puppet,stage=2,vae={E.VAE_DIR}"
  )
  c.data.source = str(data)
  c.data.bucket_scale = 0.0625  # the 512 bucket -> 32x32 (the world's size)
  c.data.global_batch = 2
  c.optim.warmup_steps = 0
  it = data_pipeline.train_iterator(c.data)
  batches = (next(it) for _ in range(20))
  batch = next(b for b in batches if b["video"].shape[1] > 1)  # a video batch, not image pairs
  assert batch["video"].shape == (2, 9, 32, 32, 3)
  s = trainer.setup(c, mesh=sharding.make_mesh((1, 1, 1, 1), jax.devices()[:1]))
  state, rng = s.state, np.asarray(s.state.rng)  # a host copy: the step donates the state
  losses = []
  for _ in range(6):
    state, m = s.step_fn(state.replace(rng=jax.numpy.asarray(rng)), batch)
    losses.append(float(jax.device_get(m["loss"])))
  assert all(np.isfinite(losses)), losses
  assert losses[-1] < 0.9 * losses[0], losses


def test_demo_writes_its_files(tmp_path, capsys):
  from o2a_jax.cli import main

  out = tmp_path / "demo"
  args = ["demo", "--out", str(out), "--frames", "9", "--chunk", "9", "--steps", "2", "--quiet"]
  assert main(args) == 0
  for name in ("result.gif", "result.mp4", "side_by_side.gif", "side_by_side.mp4",
               "reference.png", "strip.png", "metrics.json"):  # fmt: skip
    assert (out / name).stat().st_size > 0, name
  metrics = json.loads((out / "metrics.json").read_text())["metrics"]
  assert np.isfinite(metrics["model"]["psnr_db"]) and -1 <= metrics["model"]["ssim"] <= 1
  text = capsys.readouterr().out
  assert str(out.absolute()) in text and "PSNR" in text


def test_demo_rejects_bad_flags(capsys):
  from o2a_jax.cli import main

  assert main(["demo", "--chunk", "10"]) == 2
  assert "--chunk" in capsys.readouterr().err


def test_model_refuses_another_vae(tmp_path):
  """The shipped denoiser names its VAE by sha256; another VAE is a clear error."""
  E.check_vae_hash(E.MODEL_DIR, E.VAE_DIR)  # the shipped pair matches
  (tmp_path / E.VAE_HASH_FILE).write_text("0" * 64 + "\n")
  with pytest.raises(ValueError, match="not the one the denoiser"):
    E.check_vae_hash(tmp_path, E.VAE_DIR)


def test_model_folder_names_its_pose_drawing(tmp_path):
  """Sampling draws poses as the model's training did; a folder without the file is official."""
  assert E.pose_drawing(tmp_path) == "official"
  (tmp_path / E.POSE_DRAWING_FILE).write_text("viewing\n")
  assert E.pose_drawing(tmp_path) == "viewing"
  (tmp_path / E.POSE_DRAWING_FILE).write_text("thin\n")
  with pytest.raises(ValueError, match="unknown pose drawing 'thin'"):
    E.pose_drawing(tmp_path)


def test_toy_trains_then_demo_runs_on_it(tmp_path, capsys, monkeypatch):
  """The toy's whole recipe at test size: a puppet world, `scripts/train_puppet_model.py` (data
  build, `o2a train` stages 1-3 in child processes, official-layout exports), then `o2a demo` on
  the trained model with the VAE it was trained with."""
  import importlib.util

  from o2a_jax.cli import main
  from o2a_jax.puppet.world import WorldConfig, write_world

  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location("tpm", root / "scripts" / "train_puppet_model.py")
  tpm = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(tpm)
  world = tmp_path / "world"
  cfg = WorldConfig(seed=7, videos=3, images=1, heldout=1, frames=24, supersample=1)
  write_world(cfg, world, progress=False)
  model = tmp_path / "model"
  # The `o2a train` children see one CPU device, as on a user's machine (the suite's eight
  # simulated ones would not divide the batch of 2).
  flags = os.environ.get("XLA_FLAGS", "").split()
  monkeypatch.setenv("XLA_FLAGS", " ".join(f for f in flags if "device_count" not in f))
  argv = ["--world", str(world), "--workdir", str(tmp_path / "run"), "--out", str(model),
          "--steps", "2,2,2", "--batch", "2", "--warmup", "0", "--small"]  # fmt: skip
  assert tpm.main(argv) == 0
  log = json.loads((model / "training.json").read_text())
  assert [s["steps"] for s in log["stages"]] == [2, 2, 2]
  assert all(np.isfinite(s["loss_last"][1]) for s in log["stages"])
  assert E.pose_drawing(model) == "viewing"  # the puppet config's, recorded for sampling
  out = tmp_path / "demo"
  args = ["demo", "--model", str(model), "--out", str(out), "--frames", "9", "--chunk", "9",
          "--steps", "2", "--scale", "2", "--quiet"]  # fmt: skip
  assert main(args) == 0
  meta = json.loads((out / "metrics.json").read_text())
  assert np.isfinite(meta["metrics"]["model"]["psnr_db"]) and meta["pose_drawing"] == "viewing"
  assert "PSNR" in capsys.readouterr().out
