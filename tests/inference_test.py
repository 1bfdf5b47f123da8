"""Inference: chunk plans and stitching, preprocessing, clear errors, and `o2a animate` /
`o2a transfer` / `o2a pose render` end to end with the tiny denoiser and tiny VAE fixtures."""

from __future__ import annotations

import types

import numpy as np
import pytest

from o2a_jax import cli
from o2a_jax import pose as pose_lib
from o2a_jax.inference import chunks as ch
from o2a_jax.inference import prepare as prep
from o2a_jax.io.video import read_video, write_video

# A frontal standing person in normalised coordinates (COCO body order), used to synthesise
# whole-body keypoints.
_BODY = [
  (0.50, 0.15), (0.52, 0.13), (0.48, 0.13), (0.55, 0.14), (0.45, 0.14), (0.60, 0.28),
  (0.40, 0.28), (0.65, 0.42), (0.35, 0.42), (0.67, 0.55), (0.33, 0.55), (0.56, 0.58),
  (0.44, 0.58), (0.57, 0.75), (0.43, 0.75), (0.57, 0.92), (0.43, 0.92),
]  # fmt: skip


def person_kp133(width, height, *, phase=0.0, scale=1.0, score=0.95):
  """(133, 3) pixel keypoints of the synthetic person; `phase` swings the arms."""
  body = np.array(_BODY, np.float64)
  body[[7, 9], 1] -= 0.05 * np.sin(phase) * np.array([1, 2])
  body[[8, 10], 1] += 0.05 * np.sin(phase) * np.array([1, 2])
  body = (body - 0.5) * scale + 0.5
  feet = body[[15, 15, 15, 16, 16, 16]] + [[0.02, 0.04], [0.04, 0.04], [0, 0.02]] * 2
  angle = np.linspace(0, 2 * np.pi, 68, endpoint=False)
  face = body[0] + 0.04 * scale * np.stack([np.cos(angle), np.sin(angle)], -1)
  fingers = np.linspace(0, 0.05 * scale, 21)[:, None] * [0.3, 1.0]
  hands = np.concatenate([body[9] + fingers, body[10] + fingers])
  xy = np.concatenate([body, feet, face, hands]) * [width, height]
  return np.concatenate([xy, np.full((133, 1), score)], -1)


def test_chunk_plans_any_length():
  for n in [*range(1, 200), 400, 1000]:
    plan = ch.plan_chunks(n)
    ch.check_plan(plan, n)
    assert all(c.frames <= ch.MAIN_CHUNK and (c.frames - 1) % 4 == 0 for c in plan)
    assert len(plan) == (1 if n <= 81 else 1 + -(-(n - 81) // 76))
  assert [(c.start, c.end) for c in ch.plan_chunks(85)] == [(0, 81), (76, 85)]
  assert ch.plan_chunks(85)[1].write_start == 81  # its 5 context frames keep the originals
  assert [(c.start, c.end) for c in ch.plan_chunks(10)] == [(0, 13)]  # padded, then cropped


def test_fixed_chunk_plans():
  assert [(c.start, c.end) for c in ch.fixed_chunks(29, 17)] == [(0, 17), (12, 29)]
  assert [(c.start, c.end) for c in ch.fixed_chunks(30, 17)] == [(0, 17), (12, 29), (24, 41)]
  for n in range(1, 60):
    ch.check_plan(ch.fixed_chunks(n, 17), n)  # only the last chunk pads past the end
  with pytest.raises(ValueError, match="4k\\+1"):
    ch.fixed_chunks(30, 16)
  with pytest.raises(ValueError, match="runs past"):
    ch.check_plan([ch.Chunk(0, 17, 0), ch.Chunk(12, 33, 17), ch.Chunk(28, 45, 33)], 30)


def test_official_chunk_plan():
  plan = ch.plan_chunks(81, reproduce_official=True)
  assert [(c.start, c.end, c.write_start) for c in plan] == [(0, 81, 0), (16, 81, 16)]
  assert [(c.start, c.end) for c in ch.plan_chunks(200, reproduce_official=True)] == [
    (0, 81), (76, 157), (135, 200),
  ]  # fmt: skip
  for n in range(81, 400):
    ch.check_plan(ch.plan_chunks(n, reproduce_official=True), n)
  with pytest.raises(ValueError, match="at least 81"):
    ch.plan_chunks(80, reproduce_official=True)


def test_stitching_keeps_or_overwrites_context():
  n = 85
  outs = lambda plan: [np.full((c.frames, 1, 1, 3), i + 1, np.uint8) for i, c in enumerate(plan)]
  ours = ch.stitch(ch.plan_chunks(n), outs(ch.plan_chunks(n)), n)[:, 0, 0, 0]
  assert (ours[:81] == 1).all() and (ours[81:] == 2).all()
  plan = ch.plan_chunks(n, reproduce_official=True)  # (0, 81), (20, 85): later chunks win
  off = ch.stitch(plan, outs(plan), n)[:, 0, 0, 0]
  assert (off[:20] == 1).all() and (off[20:] == 2).all()


@pytest.mark.parametrize("n,official", [(85, False), (9, False), (6, False), (81, True)])
def test_generate_video_chunks_and_context(monkeypatch, n, official):
  """The chunk loop without the model: poses, noise and TokenReplace context of every call."""
  from o2a_jax.inference import animate

  calls = []

  def fake_chunk(model, vae, image, mask, pose_video, ref_pose, text, neg, noise, **kw):
    calls.append(dict(poses=pose_video, noise=noise, prev=kw["prev_frames"]))
    for i in range(kw["steps"]):
      kw["on_step"](i)
    # frame value = 10 * chunk number + the pose frame's marker, in [-1, 1]
    marker = (pose_video[:, 0, 0, 0] + 1) * 127.5
    return np.broadcast_to(
      ((marker + 10 * len(calls)) / 127.5 - 1)[:, None, None, None], pose_video.shape
    ).copy()

  monkeypatch.setattr(animate, "generate_chunk", fake_chunk)
  poses = np.zeros((n, 16, 16, 3), np.uint8)
  poses[..., 0] = np.minimum(np.arange(n), 9)[:, None, None]  # frame markers 0..9
  inputs = prep.Prepared(
    image=np.zeros((16, 16, 3), np.uint8), mask=np.zeros((16, 16), np.float32),
    ref_pose=np.zeros((16, 16, 3), np.uint8), poses=poses,
  )  # fmt: skip
  text = np.zeros((4, 16), np.float32)
  vae = types.SimpleNamespace(cfg=types.SimpleNamespace(spatial_factor=8))  # only its stride read
  video = animate.generate_video(
    None, vae, inputs, text, text, steps=2, reproduce_official=official, progress=False
  )
  plan = ch.plan_chunks(n, reproduce_official=official)
  assert video.shape == (n, 16, 16, 3) and len(calls) == len(plan)
  for c, call in zip(plan, calls):
    assert call["poses"].shape[0] == c.frames and call["noise"].shape == (
      (c.frames + 3) // 4,
      2,
      2,
      16,
    )
    np.testing.assert_array_equal(call["noise"], animate.chunk_noise(42, c.frames, 16, 16))
    if c.context:  # the frames the earlier chunks wrote at [start, start + 5)
      assert call["prev"].shape == (5, 16, 16, 3)
      np.testing.assert_array_equal(
        call["prev"][:, 0, 0, 0], 10 + np.minimum(np.arange(c.start, c.start + 5), 9)
      )
    else:
      assert call["prev"] is None
  last = plan[-1]
  np.testing.assert_array_equal(video[last.write_start :, 0, 0, 0] // 10, len(plan))


def test_inference_size_and_resize_crop():
  assert prep.inference_size(720, 1280, max_short=384) == (384, 672)
  assert prep.inference_size(840, 480, max_short=576) == (832, 480)
  assert prep.inference_size(100, 70) == (96, 64)
  with pytest.raises(ValueError, match="too small"):
    prep.inference_size(12, 300)
  with pytest.raises(ValueError, match="multiples of 16"):
    prep.inference_size(64, 64, size=(40, 64))
  img = np.zeros((40, 80, 3), np.uint8)
  img[:, 20:60] = 255  # the centre square survives a square crop
  out = prep.resize_crop(img, 16, 16)
  assert out.shape == (16, 16, 3) and out.min() > 250
  kp = prep.map_keypoints(np.array([[20.0, 0.0, 1.0], [60.0, 40.0, 1.0]]), 80, 40, 16, 16)
  np.testing.assert_allclose(kp[:, :2], [[0, 0], [16, 16]])


def test_frame_range_errors():
  np.testing.assert_array_equal(prep.frame_indices(10, start=1, count=3, stride=3), [1, 4, 7])
  with pytest.raises(ValueError, match="has 10 frames.*4 were requested"):
    prep.frame_indices(10, start=1, count=4, stride=3)
  with pytest.raises(ValueError, match="bad frame range"):
    prep.frame_indices(10, stride=0)


def _ref_and_driving(n, size=32):
  ref = prep.Poses(kp133=person_kp133(size, size)[None], width=size, height=size)
  drv = prep.Poses(
    kp133=np.stack([person_kp133(size, size, phase=i / 3, scale=0.8) for i in range(n)]),
    width=size,
    height=size,
  )
  return ref, drv


@pytest.mark.parametrize("mode", ["ref", "pose"])
@pytest.mark.parametrize("retarget", [False, True])
def test_prepare_modes(mode, retarget):
  ref, drv = _ref_and_driving(3, 48)
  image = np.full((48, 48, 3), 200, np.uint8)
  out = prep.prepare(image, ref, drv, mode=mode, retarget=retarget, size=(32, 32), progress=False)
  assert out.image.shape == (32, 32, 3) and out.poses.shape == (3, 32, 32, 3)
  assert out.mask.shape == (32, 32) and 0 <= out.mask.min() and out.mask.max() <= 1
  assert out.poses.max() > 0 and out.ref_pose.max() > 0
  if mode == "ref":
    assert out.mask.max() == 0
  else:  # the driving person is smaller: the scaled-down reference leaves a border to outpaint
    assert out.mask.max() == 1


@pytest.mark.parametrize("mode", ["ref", "pose"])
def test_prepare_draws_with_the_models_drawing(mode):
  """`drawing` reaches every pose `prepare` draws (driving frames and reference pose), and the
  command line offers exactly `pose.render`'s drawings."""
  from o2a_jax import pose as pose_lib
  from o2a_jax.inference import cli

  ref, drv = _ref_and_driving(2, 32)
  image = np.full((32, 32, 3), 200, np.uint8)
  kw = dict(mode=mode, size=(32, 32), progress=False)
  official = prep.prepare(image, ref, drv, **kw)
  viewing = prep.prepare(image, ref, drv, drawing="viewing", **kw)
  want = pose_lib.render(prep.driving_dicts(drv, 32, 32)[1], 32, 32, face_change=True,
                         drawing="viewing")  # fmt: skip
  np.testing.assert_array_equal(viewing.poses[1], want)
  # Continuous lines light several times the pixels of the official drawing's dots at 32 px.
  for a, b in ((viewing.poses, official.poses), (viewing.ref_pose, official.ref_pose)):
    assert (a.max(-1) > 40).sum() > 2 * (b.max(-1) > 40).sum()
  np.testing.assert_array_equal(viewing.image, official.image)
  with pytest.raises(ValueError, match="prepare: unknown pose drawing 'thin'"):
    prep.prepare(image, ref, drv, drawing="thin", **kw)
  for command in ("animate", "transfer", "render"):
    action = next(
      a for a in _subparser(cli, command)._actions if "--pose-drawing" in a.option_strings
    )
    assert tuple(action.choices) == pose_lib.DRAWINGS and action.default == "official"


def _subparser(cli, command):
  import argparse

  parser = argparse.ArgumentParser()
  cli.add_parser(parser.add_subparsers())
  stack = [parser]
  while stack:
    p = stack.pop()
    for a in p._actions:
      if isinstance(a, argparse._SubParsersAction):
        if command in a.choices:
          return a.choices[command]
        stack.extend(a.choices.values())
  raise KeyError(command)


def test_keypoints_without_scale_name_the_joints():
  ref, drv = _ref_and_driving(2)
  kp = drv.kp133.copy()
  kp[:, [5, 6, 11, 12], 2] = 0.5  # shoulders and hips unsure
  kp[:, [3, 4], 2] = 0.0  # ears undetected
  bad = prep.Poses(kp133=kp, width=32, height=32)
  with pytest.raises(ValueError, match=r"right shoulder \(2\).*ears not detected: right ear"):
    prep.prepare(np.zeros((32, 32, 3), np.uint8), ref, bad, mode="pose", progress=False)


# --- end to end through the command line ----------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory, fixtures_dir):
  d = tmp_path_factory.mktemp("inference")
  rng = np.random.default_rng(0)
  write_video(d / "ref.png", rng.integers(0, 255, (32, 32, 3), np.uint8))
  pose_lib.write_keypoints_json(d / "ref.json", person_kp133(32, 32)[None], 32, 32)
  frames = np.stack([person_kp133(32, 32, phase=i / 5) for i in range(85)])
  pose_lib.write_keypoints_json(d / "drv.json", frames, 32, 32)
  common = [
    "--ref", str(d / "ref.png"), "--ref-pose", str(d / "ref.json"),
    "--checkpoint", str(fixtures_dir / "model_tiny"), "--vae", str(fixtures_dir / "vae_tiny"),
    "--dtype", "float32", "--vae-dtype", "float32", "--empty-text-embeds", "zeros",
    "--steps", "2", "--image-guidance", "1", "--no-progress",
  ]  # fmt: skip
  return d, common


def test_animate_9_frames(files):
  d, common = files
  out = d / "nine.mp4"
  argv = ["animate", *common, "--driving", str(d / "drv.json"), "--frames", "9", "--stride", "2"]
  assert cli.main([*argv, "--out", str(out), "--side-by-side"]) == 0
  video, _ = read_video(out)
  assert video.shape == (9, 32, 64, 3)


@pytest.mark.slow  # ~40 s more compilation (81- and 9-frame TokenReplace programs)
def test_animate_85_frames_two_chunks(files):
  d, common = files
  out = d / "long"
  argv = ["animate", *common, "--driving", str(d / "drv.json"), "--out", str(out)]
  assert cli.main(argv) == 0
  video, _ = read_video(out)
  assert video.shape == (85, 32, 32, 3)
  assert video.std() > 0


def test_transfer_writes_an_image(files):
  d, common = files
  out = d / "transfer.png"
  argv = ["transfer", *common, "--pose", str(d / "drv.json"), "--pose-frame", "3"]
  assert cli.main([*argv, "--out", str(out)]) == 0
  img, _ = read_video(out)
  assert img.shape == (1, 32, 32, 3)


def test_pose_render(files):
  d, _ = files
  out = d / "poses.gif"
  assert cli.main(["pose", "render", str(d / "drv.json"), "--frames", "3", "--out", str(out)]) == 0
  assert read_video(out)[0].shape[1:] == (32, 32, 3)


def _error(capsys, argv):
  assert cli.main(argv) == 2
  return capsys.readouterr().err


def test_cli_errors_are_clear(files, capsys, tmp_path):
  d, common = files
  base = ["animate", *common, "--driving", str(d / "drv.json"), "--out", str(tmp_path / "o.mp4")]
  bad_image = tmp_path / "bad.png"
  bad_image.write_bytes(b"not an image")
  bad_ref = [*base[:2], str(bad_image), *base[3:]]
  assert "cannot read image" in _error(capsys, bad_ref)
  assert "no text conditioning" in _error(
    capsys, [a for a in base if a not in ("--empty-text-embeds", "zeros")]
  )
  assert "100 were requested" in _error(capsys, [*base, "--frames", "100"])
  assert "--det-model" in _error(capsys, [*base[:3], *base[5:]])  # no --ref-pose, no models
  assert "multiples of 16" in _error(capsys, [*base, "--size", "40x32"])
  assert "at least 81" in _error(capsys, [*base, "--frames", "9", "--reproduce-official"])
  corrupt = tmp_path / "corrupt.mp4"
  corrupt.write_bytes(b"\x00" * 100)
  assert "cannot decode video" in _error(
    capsys, [*base[:-4], "--driving", str(corrupt), *base[-2:]]
  )
  missing = tmp_path / "missing.mp4"
  assert "does not exist" in _error(capsys, [*base[:-4], "--driving", str(missing), *base[-2:]])


def test_text_embeddings_from_files(tmp_path):
  from o2a_jax.inference.load import text_embeddings
  from o2a_jax.io.safetensors import save_dict

  a, b = np.ones((5, 16), np.float32), np.full((7, 16), 2, np.float32)
  np.savez(tmp_path / "both.npz", text_embeds=a[None], negative_text_embeds=b)
  save_dict(tmp_path / "neg.safetensors", {"embeds": b})
  text, neg = text_embeddings(16, need_negative=True, text_embeds=str(tmp_path / "both.npz"))
  assert text.shape == neg.shape == (7, 16) and (text[5:] == 0).all() and (neg == 2).all()
  np.savez(tmp_path / "pos.npz", embeds=a)
  with pytest.raises(ValueError, match="negative-text-embeds"):
    text_embeddings(16, need_negative=True, text_embeds=str(tmp_path / "pos.npz"))
  text, neg = text_embeddings(
    16,
    need_negative=True,
    text_embeds=str(tmp_path / "pos.npz"),
    negative_text_embeds=str(tmp_path / "neg.safetensors"),
  )
  assert (neg[:7] == 2).all()
  with pytest.raises(ValueError, match=r"the model needs \(S, 32\)"):
    text_embeddings(32, need_negative=False, text_embeds=str(tmp_path / "pos.npz"))
  assert text_embeddings(16, need_negative=True, empty_text_embeds="zeros")[0].shape == (512, 16)
  with pytest.raises(ValueError, match="no text conditioning"):
    text_embeddings(16, need_negative=False)


def test_library_values_check_themselves(files):
  from o2a_jax.inference import generation, pose_sources

  d, _ = files
  with pytest.raises(ValueError, match="--steps must be >= 1"):
    generation.Sampling(steps=0)
  with pytest.raises(ValueError, match="a driving video needs pose estimation"):
    pose_sources.PoseModels().estimator("a driving video")
  frames = pose_sources.render_file(d / "drv.json", start=4, count=2, progress=False)
  assert frames.shape == (2, 32, 32, 3) and frames.dtype == np.uint8 and frames.any()


def test_int8_checkpoint_loads_for_inference(fixtures_dir, tmp_path, capsys):
  """`o2a convert quantize`, then the loader `o2a animate|transfer --checkpoint` uses (sampling
  with the int8 model is `quantize_test`'s forward; the CLI path is the float one's)."""
  from o2a_jax.inference.load import load_denoiser
  from o2a_jax.model import quantize

  q8 = tmp_path / "q8"
  argv = ["convert", "quantize", str(fixtures_dir / "model_tiny"), str(q8), "--dtype", "fp32"]
  assert cli.main(argv) == 0
  assert "int8 linears" in capsys.readouterr().out
  model = load_denoiser(q8, dtype="float32")
  assert quantize.quantized_format(model) == "int8" and quantize.quantized_paths(model)
