"""The prepared GPU check runs its whole code path at tiny sizes on the CPU (`--dry-run`), writes
the documented JSON, and refuses to run for real without a GPU."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SUITE = ROOT / "benchmarks" / "gpu_suite.py"


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # one CPU device, as on the GPU machine
  return env


FAST = ["env", "denoise_step", "vae_decode", "attention_numerics", "attention_speed"]


def _dry_run(out, only=None):
  cmd = [sys.executable, str(SUITE), "--dry-run", "--out", str(out)]
  if only:
    cmd += ["--only", ",".join(only)]
  r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
  assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
  report = json.loads((out / "gpu_suite.json").read_text())
  assert report["schema"] == "o2a-gpu-suite/1" and report["dry_run"] is True
  assert not list(out.glob("*.part.json")) and not list(out.glob(".*.section.json"))
  for name, entry in report["sections"].items():
    assert entry["status"] == "ok", (name, entry)
  return report["sections"]


def test_dry_run_writes_its_sections(tmp_path):
  """Every section but the train step (its tiny compile alone takes ~40 s here; the full dry run
  below is `slow`), in the documented schema."""
  sections = _dry_run(tmp_path / "suite", FAST)
  assert list(sections) == FAST
  assert sections["env"]["results"]["backend"] == "cpu"
  numerics = [r for r in sections["attention_numerics"]["results"] if r["impl"] == "pallas_gpu"]
  assert {(r["mode"], r["dtype"]) for r in numerics} == {
    (m, d) for m in ("self", "reference", "hybrid") for d in ("bfloat16", "float32")
  }
  assert all(r["status"] == "pass" for r in numerics), numerics
  gpu_only = [r for r in sections["attention_numerics"]["results"] if r["impl"] != "pallas_gpu"]
  assert gpu_only and all(r["status"] == "skipped: needs a GPU" for r in gpu_only)
  assert set(sections["attention_speed"]["parts"]) == {"jax_cudnn,cudnn,xla", "pallas_gpu",
                                                       "pallas_mosaic"}  # fmt: skip
  speed = sections["attention_speed"]["results"]
  assert {r["impl"] for r in speed} == {"xla", "pallas_gpu"}
  assert all(r["fwd_tflops"] > 0 and r["bwd_tflops"] > 0 for r in speed), speed
  assert sections["denoise_step"]["results"][0]["step_s"] > 0
  assert sections["vae_decode"]["results"]["jax"]["decode"]["median_s"] > 0
  assert "===== vae_decode =====" in (tmp_path / "suite" / "gpu_suite.log").read_text()


@pytest.mark.slow
def test_full_dry_run(tmp_path):
  sections = _dry_run(tmp_path / "suite")
  assert list(sections) == ["env", *FAST[1:3], "train_step", *FAST[3:]]
  assert sections["train_step"]["results"][0]["step_s"] > 0


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the refusal without a GPU")
def test_refuses_without_gpu(tmp_path):
  r = subprocess.run(
    [sys.executable, str(SUITE), "--out", str(tmp_path / "x")],
    capture_output=True, text=True, env=_env(), timeout=120,
  )  # fmt: skip
  assert r.returncode == 2
  assert "no GPU is visible" in r.stderr
  assert not (tmp_path / "x").exists()


def test_unknown_section_is_named(tmp_path):
  r = subprocess.run(
    [sys.executable, str(SUITE), "--dry-run", "--only", "env,bogus", "--out", str(tmp_path)],
    capture_output=True, text=True, env=_env(), timeout=120,
  )  # fmt: skip
  assert r.returncode == 2 and "bogus" in r.stderr
