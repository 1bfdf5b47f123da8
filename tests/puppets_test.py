"""The puppet world: determinism, keypoint/frame consistency, and the official on-disk layout."""

import dataclasses
import json
import os

import numpy as np
import pytest

from o2a_jax import pose as P
from o2a_jax.io.video import read_video
from o2a_jax.puppet import draw as D
from o2a_jax.puppet import skeleton as S
from o2a_jax.puppet.motion import MOTIONS, make_motion
from o2a_jax.puppet.spec import Background, Framing, PuppetSpec
from o2a_jax.puppet.world import (
  WorldConfig,
  load_gt,
  make_image_pair,
  make_video,
  read_csv,
  write_mp4_444,
  write_world,
)

CFG = WorldConfig(
  seed=3, videos=2, images=2, heldout=1, frames=9, heldout_frames=13, height=64, width=64
)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  out = tmp_path_factory.mktemp("w") / "world"
  summary = write_world(CFG, out, progress=False)
  return out, summary


def test_same_seed_same_clip_other_seed_other_clip():
  a, b = make_video(CFG, 1), make_video(CFG, 1)
  np.testing.assert_array_equal(a.frames, b.frames)
  np.testing.assert_array_equal(a.kp133, b.kp133)
  assert a.meta == b.meta
  c = make_video(WorldConfig(seed=4, frames=9), 1)
  assert not np.array_equal(a.frames, c.frames)


@pytest.mark.parametrize("k", range(6))
def test_keypoints_in_frame_and_valid_poses(k):
  clip = make_video(WorldConfig(seed=11, frames=9), k)
  kp = clip.kp133
  h, w = clip.frames.shape[1:3]
  seen = kp[..., 2] > 0
  assert seen.any(axis=1).all(), "every frame shows some keypoints"
  xy = kp[..., :2][seen]
  assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= w - 1).all()
  assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= h - 1).all()
  for frame in kp:  # the official conversion accepts every frame
    pose = P.from_coco_wholebody(frame, w, h)
    assert P.render(pose, h, w).any()


def _frontal_clip(motion, seed):
  rng = np.random.default_rng(seed)
  spec = PuppetSpec.sample(rng)
  angles = make_motion(motion, rng, 3, 16.0)
  angles["yaw"][:] = 0.0
  angles["head_yaw"][:] = 0.0
  world, vis = S.joints_3d(angles, spec.proportions)
  cam = D.camera_for(world, Framing("full", 0.85, 0.0, 0.0), spec.proportions, 160, 160)
  return spec, cam, cam.project(world), vis


@pytest.mark.parametrize("motion,seed", [(m, s) for s, m in enumerate(MOTIONS)])
def test_limb_colour_at_limb_midpoint(motion, seed):
  spec, cam, px, vis = _frontal_clip(motion, seed)
  bg = Background("solid", (0, 0, 0), (0, 0, 0), 0.5, 0.1, 0).draw(160, 160)
  img, labels = D.render_frame(spec, px[0], vis[0], bg, cam.scale, supersample=1)
  checked = 0
  for name, i, j in D.LIMBS:
    x, y = np.rint((px[0, i, :2] + px[0, j, :2]) / 2).astype(int)
    assert labels[y, x] != D.PART["background"], f"{name}: nothing drawn at its midpoint"
    if labels[y, x] == D.PART[name]:  # not covered by a nearer part
      assert tuple(img[y, x]) in D.limb_style(spec, name).colors(), name
      checked += 1
  assert checked >= 4
  # The visible eye keypoints carry the drawn eyes.
  for k in (1, 2):
    if vis[0, k]:
      x, y = np.rint(px[0, k, :2]).astype(int)
      assert labels[y, x] == D.PART["face"]


def test_world_layout_is_official(world):
  out, summary = world
  rows = read_csv(out / "train.csv")
  videos = [r for r in rows if r["path"].endswith(".mp4")]
  groups = [r for r in rows if r["path"].startswith("image_")]
  assert len(videos) == CFG.videos and len(groups) >= 1
  for r in videos:
    poses = P.read_official_npy(out / r["pose_path"])
    frames, fps = read_video(out / r["path"])
    n, h, w = int(r["num_frames"]), int(r["height"]), int(r["width"])
    assert len(poses) == n == frames.shape[0] and frames.shape[1:] == (h, w, 3)
    assert fps == pytest.approx(float(r["fps"]))
    assert len(json.loads(r["all_ocr_bbox"])) == n
    gt = load_gt(out / "gt" / (r["path"].split("/")[-1][:-4] + ".npz"))
    mse = np.mean((frames.astype(float) - gt["frames"]) ** 2)
    assert 10 * np.log10(255**2 / mse) > 36  # H.264 4:4:4 of the lossless ground truth
    ref = P.from_coco_wholebody(gt["kp133"][0].astype(np.float64), w, h)
    np.testing.assert_allclose(
      poses[0]["bodies"]["candidate"], ref["bodies"]["candidate"], atol=1e-6
    )
  pairs = [p for g in groups for p in json.loads(g["img_pairs"])]
  assert len(pairs) == CFG.images
  for p in pairs:
    for key in ("src_path", "tgt_path"):
      assert (out / p[key]).is_file()
      P.read_official_npy(out / p[key].replace(".png", "_pose.npy"))  # `<stem>_pose.npy`
    src, tgt = (
      load_gt(out / "gt" / (p[k].split("/")[-1][:-4] + ".npz")) for k in ("src_path", "tgt_path")
    )
    assert src["meta"]["puppet"] == tgt["meta"]["puppet"]  # one identity
    assert src["meta"]["framing"]["kind"] != tgt["meta"]["framing"]["kind"]  # misaligned


def test_heldout_split(world):
  out, summary = world
  rows = read_csv(out / "heldout.csv")
  held = [r for r in rows if r["path"].endswith(".mp4")]
  assert len(held) == CFG.heldout and int(held[0]["num_frames"]) == 13
  gt = load_gt(out / "gt" / "h00000.npz")
  assert gt["meta"]["heldout"] and gt["ref_frame"].shape == (64, 64, 3)
  assert gt["meta"]["reference"]["framing"]["kind"] != gt["meta"]["framing"]["kind"]
  train_ids = {json.dumps(load_gt(f)["meta"]["puppet"]) for f in (out / "gt").glob("v*.npz")}
  assert json.dumps(gt["meta"]["puppet"]) not in train_ids
  assert json.loads((out / "world.json").read_text())["heldout_videos"] == [r["path"] for r in held]


def test_misaligned_references_share_the_scene_unless_new():
  """A misaligned reference is shown in front of its target's scene; "new" changes only that."""
  same = WorldConfig(seed=5, frames=9, heldout=2)
  new = WorldConfig(seed=5, frames=9, heldout=2, reference_background="new")
  a, b = make_video(same, 0, heldout=True), make_video(new, 0, heldout=True)
  assert a.meta["reference"]["background"] == a.meta["background"]
  assert b.meta["reference"]["background"] != b.meta["background"]
  np.testing.assert_array_equal(a.frames, b.frames)
  np.testing.assert_array_equal(a.meta["ref"].kp133, b.meta["ref"].kp133)
  assert a.meta["reference"]["framing"] == b.meta["reference"]["framing"]
  (sa, ta), (sb, tb) = make_image_pair(same, 1), make_image_pair(new, 1)
  assert sa.meta["background"] == ta.meta["background"] == tb.meta["background"]
  assert sb.meta["background"] != tb.meta["background"]
  np.testing.assert_array_equal(sa.kp133, sb.kp133)
  np.testing.assert_array_equal(ta.frames, tb.frames)
  with pytest.raises(ValueError, match="reference_background"):
    WorldConfig(reference_background="other")


def test_refuses_non_empty_output(world):
  out, _ = world
  with pytest.raises(FileExistsError):
    write_world(CFG, out, progress=False)


def test_world_files_are_the_same_for_any_worker_count(world, tmp_path):
  """Every file, byte for byte, whether written by one process or by two (and on every run)."""
  out, _ = world
  again = tmp_path / "again"
  write_world(CFG, again, progress=False, workers=2)
  files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
  assert files == sorted(str(p.relative_to(again)) for p in again.rglob("*") if p.is_file())
  for f in files:
    assert (out / f).read_bytes() == (again / f).read_bytes(), f


def test_world_clips_decode_the_same_whatever_was_allocated_before(tmp_path):
  """libx264's lossy output depends on what the process allocated before (`write_mp4_444`); the
  world's default (lossless) clips decode to the same frames, within the YUV rounding of the
  ground truth."""
  clip = make_video(WorldConfig(seed=5), 1)  # 48 frames
  rng = np.random.default_rng(0)
  decoded = []
  for i in range(6):
    junk = [os.urandom(int(n)) for n in rng.integers(1000, 300_000, 50)]
    del junk  # freed blocks full of other bytes
    write_mp4_444(tmp_path / f"{i}.mp4", clip.frames, 16.0, WorldConfig().quality)
    decoded.append(read_video(tmp_path / f"{i}.mp4")[0])
  for d in decoded[1:]:
    np.testing.assert_array_equal(d, decoded[0])
  assert np.abs(decoded[0].astype(int) - clip.frames).max() <= 2


def test_bad_config_raises(tmp_path):
  with pytest.raises(ValueError, match="multiples of 16"):
    WorldConfig(height=60)
  with pytest.raises(ValueError, match="quality"):
    WorldConfig(quality=-1)
  with pytest.raises(ValueError, match="workers"):
    write_world(CFG, tmp_path / "w", progress=False, workers=0)
  assert not (tmp_path / "w").exists()
  with pytest.raises(ValueError, match="unknown motion"):
    make_motion("jump", np.random.default_rng(0), 4, 16.0)


def test_world_backgrounds_and_thickness():
  """`backgrounds` limits the scene kinds drawn; `thickness` scales every puppet's parts (more
  painted pixels), and both refuse bad values by name."""
  from o2a_jax.puppet.spec import BACKGROUNDS
  from o2a_jax.puppet.world import puppet

  smooth = WorldConfig(seed=2, frames=9)
  kinds = {make_video(smooth, k).meta["background"]["kind"] for k in range(12)}
  assert kinds <= {"solid", "gradient", "floor"} and len(kinds) > 1, kinds
  every = WorldConfig(seed=2, frames=9, backgrounds=BACKGROUNDS)
  assert {make_video(every, k).meta["background"]["kind"] for k in range(24)} - kinds
  thin = WorldConfig(seed=2, frames=9, thickness=1.0)
  assert puppet(smooth, 0).thickness == pytest.approx(1.6 * puppet(thin, 0).thickness)
  a, b = make_video(smooth, 0), make_video(thin, 0)
  assert (a.labels > 0).sum() > 1.1 * (b.labels > 0).sum()  # limbs and torso; not the head
  with pytest.raises(ValueError, match="backgrounds"):
    WorldConfig(backgrounds=("solid", "marble"))
  with pytest.raises(ValueError, match="thickness"):
    WorldConfig(thickness=0.0)


def test_moving_camera_glides_to_another_framing():
  """`moving_camera`: the chosen training clips start as without it and end in a framing of another
  kind (the puppet's size changes over the clip); the other clips and the held-out split (clips and
  references) are unchanged, and a bad fraction is refused by name."""
  fixed = WorldConfig(seed=3, frames=12, heldout=2)
  moving = dataclasses.replace(fixed, moving_camera=1.0)
  for k in range(3):
    a, b = make_video(fixed, k), make_video(moving, k)
    assert b.meta["framing_end"]["kind"] != b.meta["framing"]["kind"]
    np.testing.assert_array_equal(a.frames[0], b.frames[0])
    assert not np.array_equal(a.frames[-1], b.frames[-1])
    end = b.meta["camera_end"]
    assert b.meta["camera"]["scale"] != end["scale"]
    # The head (never cut off by a framing) changes size with the camera's scale.
    head = [(lab == D.PART_NAMES.index("head")).sum() for lab in b.labels]
    ratio = (end["scale"] / b.meta["camera"]["scale"]) ** 2
    assert head[-1] / head[0] == pytest.approx(ratio, rel=0.25), (head[0], head[-1], ratio)
    assert not 0.8 < ratio < 1.25, ratio
  some = dataclasses.replace(fixed, moving_camera=0.5)
  moved = ["framing_end" in make_video(some, k).meta for k in range(16)]
  assert 0 < sum(moved) < 16, moved
  for k in range(2):
    a, b = make_video(fixed, k, heldout=True), make_video(moving, k, heldout=True)
    assert "framing_end" not in b.meta
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.meta["ref"].frames, b.meta["ref"].frames)
  with pytest.raises(ValueError, match="moving_camera"):
    WorldConfig(moving_camera=1.5)


def test_viewing_pose_drawing_is_connected():
  """The demo's pose pictures (`pose.render.viewing`): the body skeleton of a 64-px frame drawn at
  256 px is one connected figure, where the official 64-px drawing (model input) falls apart into
  dots and bars."""
  import cv2

  from o2a_jax.inference.prepare import Poses, driving_dicts
  from o2a_jax.pose import render
  from o2a_jax.pose.render import viewing

  clip = make_video(WorldConfig(seed=4, frames=9, backgrounds=("solid",)), 2)
  pose = driving_dicts(Poses(kp133=clip.kp133[:1].astype(np.float32), width=64, height=64), 64, 64)
  p = pose[0]
  body = dict(p, hands_score=np.zeros_like(p["hands_score"]), faces=None, faces_score=None)

  def pieces(img):
    return cv2.connectedComponents((img.max(-1) > 40).astype(np.uint8), connectivity=8)[0] - 1

  view = viewing(body, 256, 256)
  assert view.shape == (256, 256, 3)
  assert pieces(view) == 1, pieces(view)
  assert pieces(render(body, 64, 64)) > 3
  # The toy's model input at 64 px ("viewing") is the same continuous drawing.
  assert pieces(render(body, 64, 64, drawing="viewing")) == 1
  with pytest.raises(ValueError, match="unknown pose drawing 'thin'"):
    render(body, 64, 64, drawing="thin")
