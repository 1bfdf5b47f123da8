"""Acceptance tests of `o2a_jax.pose` against the official fixtures (pose_tiny, retarget_tiny)."""

import json
import os
import pathlib
import pickle

import numpy as np
import pytest

from o2a_jax import pose as P

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def pose_tiny():
  cases = json.loads((FIXTURES / "pose_tiny" / "cases.json").read_text())
  with np.load(FIXTURES / "pose_tiny" / "io.npz") as z:
    arrays = {k: z[k] for k in z.files}
  return cases, arrays


def _render_ids():
  cases = json.loads((FIXTURES / "pose_tiny" / "cases.json").read_text())
  return [c["key"] for c in cases["render"]]


def _translate_ids():
  cases = json.loads((FIXTURES / "pose_tiny" / "cases.json").read_text())
  return [c["key"] for c in cases["translate"]]


@pytest.mark.parametrize("key", _render_ids())
def test_render_pixel_identical(pose_tiny, key):
  cases, arrays = pose_tiny
  case = next(c for c in cases["render"] if c["key"] == key)
  img = P.render(
    cases["poses"][case["pose"]],
    case["H"],
    case["W"],
    without_face=case.get("without_face", False),
    face_change=case.get("face_change", False),
    head_change=case.get("head_change", False),
  )
  expected = arrays[key]
  assert img.dtype == np.uint8 and img.shape == expected.shape
  assert np.array_equal(img, expected), f"{np.count_nonzero(img != expected)} values differ"


@pytest.mark.parametrize("key", _translate_ids())
def test_translate_reference_matches(pose_tiny, key):
  cases, arrays = pose_tiny
  case = next(c for c in cases["translate"] if c["key"] == key)
  image, pose_image, mask, affine = P.translate_reference(
    arrays["translate.ref_image"],
    cases["poses"][case["reference"]],
    cases["poses"][case["driving"]],
  )
  assert float(
    P.body_scale_ratio(cases["poses"][case["reference"]], cases["poses"][case["driving"]])
  ) == (pytest.approx(case["scale"], abs=1e-7))
  for name, got in (("image", image), ("pose", pose_image), ("mask", mask)):
    expected = arrays[f"{key}.{name}"]
    assert got.dtype == np.uint8 and got.shape == expected.shape, name
    assert np.array_equal(got, expected), (
      f"{name}: {np.count_nonzero(got != expected)} values differ"
    )
  assert affine.shape == (2, 3)
  np.testing.assert_allclose(affine, arrays[f"{key}.affine"], rtol=0, atol=1e-5)


# --- retarget_tiny: estimator conversion and retargeting ----------------------------------------


@pytest.fixture(scope="module")
def retarget_tiny():
  cases = json.loads((FIXTURES / "retarget_tiny" / "cases.json").read_text())
  with np.load(FIXTURES / "retarget_tiny" / "io.npz") as z:
    arrays = {k: z[k] for k in z.files}
  return cases, arrays


def _assert_pose_close(got, expected, where, atol=1e-6):
  """Every coordinate and score within atol; None where the official output has None."""
  assert set(expected) <= set(got), where
  for key, value in expected.items():
    if isinstance(value, dict):
      _assert_pose_close(got[key], value, f"{where}.{key}", atol)
    elif value is None:
      assert got[key] is None, f"{where}.{key} should be None"
    else:
      g, e = np.asarray(got[key], dtype=np.float64), np.asarray(value, dtype=np.float64)
      assert g.shape == e.shape, f"{where}.{key}: shape {g.shape} != {e.shape}"
      np.testing.assert_allclose(g, e, rtol=0, atol=atol, err_msg=f"{where}.{key}")


SCENARIOS = ["s0", "s1"]


def _scenario(cases, key):
  return next(s for s in cases["scenarios"] if s["key"] == key)


@pytest.mark.parametrize("key", SCENARIOS)
def test_from_coco_wholebody_matches(retarget_tiny, key):
  cases, arrays = retarget_tiny
  s = _scenario(cases, key)
  w, h = cases["width"], cases["height"]
  _assert_pose_close(
    P.from_coco_wholebody(arrays[f"{key}.ref_kp133"], w, h), s["ref_dwpose"], "ref"
  )
  for i, kp in enumerate(arrays[f"{key}.drv_kp133"]):
    _assert_pose_close(P.from_coco_wholebody(kp, w, h), s["drv_dwposes"][i], f"drv[{i}]")


@pytest.mark.parametrize("key", SCENARIOS)
def test_retarget_to_reference_matches(retarget_tiny, key):
  cases, arrays = retarget_tiny
  s = _scenario(cases, key)
  poses = P.retarget_to_reference(
    arrays[f"{key}.ref_kp133"], arrays[f"{key}.drv_kp133"], cases["width"], cases["height"]
  )
  assert len(poses) == len(s["align_to_reference"])
  for i, (got, expected) in enumerate(zip(poses, s["align_to_reference"])):
    _assert_pose_close(got, expected, f"frame {i}")


@pytest.mark.parametrize("key", SCENARIOS)
def test_retarget_to_pose_official_matches(retarget_tiny, key):
  cases, _ = retarget_tiny
  s = _scenario(cases, key)
  poses = P.retarget_to_pose(s["ref_dwpose"], s["drv_dwposes"], reproduce_official=True)
  assert len(poses) == len(s["align_to_pose"])
  for i, (got, expected) in enumerate(zip(poses, s["align_to_pose"])):
    _assert_pose_close(got, expected, f"frame {i}")


@pytest.mark.parametrize("key", SCENARIOS)
def test_pick_anchor_frame_matches(retarget_tiny, key):
  cases, _ = retarget_tiny
  s = _scenario(cases, key)
  assert P.pick_anchor_frame(s["ref_dwpose"], s["drv_dwposes"]) == s["pick_good_source_frame"]


def test_retargeted_poses_render(retarget_tiny):
  """20-point retargeted poses (toes included) draw like any other pose."""
  cases, arrays = retarget_tiny
  poses = P.retarget_to_reference(
    arrays["s0.ref_kp133"], arrays["s0.drv_kp133"][:1], cases["width"], cases["height"], anchor=0
  )
  img = P.render(poses[0], 64, 48)
  assert img.shape == (64, 48, 3) and img.dtype == np.uint8 and img.any()


# --- retarget_to_pose semantics and the fixed hand assignment (official bug: align_to_pose hand
# assignment) ------------------------


def _copy(pose):
  return json.loads(json.dumps(pose))


def _long_armed(pose, factor=1.3):
  """The same pose with both upper arms `factor` times longer (forearms and hands carried along)."""
  ref = _copy(pose)
  cand = np.array(ref["bodies"]["candidate"])
  hands = np.array(ref["hands"])
  for shoulder, elbow, wrist, hand in ((2, 3, 4, 1), (5, 6, 7, 0)):  # DWPose hands: [left, right]
    shift = (factor - 1) * (cand[elbow] - cand[shoulder])
    cand[[elbow, wrist]] += shift
    hands[hand] += shift
  ref["bodies"]["candidate"] = cand.tolist()
  ref["hands"] = hands.tolist()
  return ref


def test_retarget_to_pose_applies_limb_ratios(pose_tiny):
  cases, _ = pose_tiny
  driving = cases["poses"]["full"]  # every joint confident: all limb ratios are measured
  out = P.retarget_to_pose(_long_armed(driving), [driving])[0]["bodies"]["candidate"]
  cand = np.array(driving["bodies"]["candidate"])

  def length(c, a, b):
    return np.linalg.norm(np.asarray(c)[a] - np.asarray(c)[b])

  for a, b, ratio in ((2, 3, 1.3), (5, 6, 1.3), (3, 4, 1.0), (6, 7, 1.0), (1, 2, 1.0), (8, 9, 1.0)):
    assert length(out, a, b) / length(cand, a, b) == pytest.approx(ratio, rel=1e-6), (a, b)


def _swap_hands(pose):
  p = _copy(pose)
  p["hands"] = p["hands"][::-1]
  p["hands_score"] = p["hands_score"][::-1]
  return p


def _hand_root_offsets(pose, right_hand, left_hand):
  cand, hands = np.asarray(pose["bodies"]["candidate"]), np.asarray(pose["hands"])
  return hands[right_hand, 0] - cand[4], hands[left_hand, 0] - cand[7]


def test_retarget_to_pose_hands_follow_their_wrists(pose_tiny):
  cases, _ = pose_tiny
  driving = cases["poses"]["full"]  # DWPose order [left, right]
  ref = _long_armed(driving)
  before = _hand_root_offsets(driving, 1, 0)

  # DWPose order: the official assignment is right, and the fix changes nothing.
  official = P.retarget_to_pose(ref, [driving], reproduce_official=True)[0]
  fixed = P.retarget_to_pose(ref, [driving])[0]
  np.testing.assert_array_equal(fixed["hands"], official["hands"])
  for got, want in zip(_hand_root_offsets(fixed, 1, 0), before):
    np.testing.assert_allclose(got, want, atol=1e-12)

  # Estimator order [right, left] (what the official inference feeds it): the official code moves
  # each hand with the wrong arm; the fix keeps every hand on its own wrist.
  swapped = _swap_hands(driving)
  official = P.retarget_to_pose(ref, [swapped], reproduce_official=True)[0]
  fixed = P.retarget_to_pose(ref, [swapped])[0]
  detached = _hand_root_offsets(official, 0, 1)
  assert not np.allclose(detached[0], before[0], atol=1e-4)
  for got, want in zip(_hand_root_offsets(fixed, 0, 1), before):
    np.testing.assert_allclose(got, want, atol=1e-12)
  np.testing.assert_allclose(fixed["hands"][::-1], P.retarget_to_pose(ref, [driving])[0]["hands"])


def test_retarget_to_pose_leaves_inputs_alone(pose_tiny):
  cases, _ = pose_tiny
  driving = cases["poses"]["full"]
  ref = _long_armed(driving)
  frames = [_copy(driving)]
  P.retarget_to_pose(ref, frames, anchor=None)
  assert frames[0] == driving


# --- clear errors ---------------------------------------------------------------------------------


def _with_scores(pose, joints, score):
  p = _copy(pose)
  for j in joints:
    p["bodies"]["score"][0][j] = score
  return p


def _without(pose, joints):
  p = _with_scores(pose, joints, 0.0)
  for j in joints:
    p["bodies"]["subset"][0][j] = -1
  return p


def test_no_scale_names_missing_joints(pose_tiny):
  cases, arrays = pose_tiny
  full = cases["poses"]["full"]
  weak = _without(_with_scores(full, (2, 8), 0.5), (16, 17))  # no confident shoulders, no ears
  with pytest.raises(ValueError) as err:
    P.translate_reference(arrays["translate.ref_image"], weak, full)
  msg = str(err.value)
  for name in (
    "right shoulder (2)",
    "right hip (8)",
    "right ear (16)",
    "left ear (17)",
    "reference",
  ):
    assert name in msg
  with pytest.raises(ValueError, match="left ear"):
    P.retarget_to_pose(full, [weak])


def test_poses_without_joints_are_rejected(pose_tiny):
  cases, arrays = pose_tiny
  full = cases["poses"]["full"]
  empty = _without(full, range(18))
  with pytest.raises(ValueError, match="no usable body joints"):
    P.translate_reference(arrays["translate.ref_image"], full, empty)
  with pytest.raises(ValueError, match="no usable body joints"):
    P.retarget_to_pose(empty, [full])
  with pytest.raises(ValueError, match="no usable body joints"):
    P.from_coco_wholebody(np.zeros((133, 3)), 64, 64)
  with pytest.raises(ValueError, match="off-image"):
    P.from_coco_wholebody(np.full((133, 3), -5.0), 64, 64)


def test_first_driving_frame_off_image(retarget_tiny):
  cases, arrays = retarget_tiny
  drv = arrays["s0.drv_kp133"].copy()
  drv[0, :, :2] = -10.0
  with pytest.raises(ValueError, match=r"driving_kp133: frame 0 .*off-image"):
    P.retarget_to_reference(arrays["s0.ref_kp133"], drv, cases["width"], cases["height"])
  drv[1:, :, :2] = arrays["s0.drv_kp133"][1:, :, :2]
  drv[0] = arrays["s0.drv_kp133"][0]
  drv[2, :, :2] = -10.0  # a later frame reuses the previous body, as officially
  assert (
    len(P.retarget_to_reference(arrays["s0.ref_kp133"], drv, cases["width"], cases["height"])) == 6
  )


@pytest.mark.parametrize(
  "edit, pattern",
  [
    (lambda p: p.pop("bodies"), r"missing field 'bodies'"),
    (lambda p: p["bodies"].pop("score"), r"missing field 'bodies.score'"),
    (
      lambda p: p["bodies"].update(candidate=[[0.5, 0.5]] * 17),
      r"'bodies.candidate' has shape \(17, 2\)",
    ),
    (lambda p: p["bodies"].update(score=[[0.9] * 17]), r"'bodies.score' has shape \(1, 17\)"),
    (lambda p: p.update(hands=[[[0.5, 0.5]] * 20] * 2), r"'hands' has shape \(2, 20, 2\)"),
    (lambda p: p.update(hands_score=[[0.9] * 21]), r"'hands_score' has shape \(1, 21\)"),
    (lambda p: p.update(faces=[[[0.5, 0.5, 0.5]] * 68]), r"'faces' has shape \(1, 68, 3\)"),
    (lambda p: p.pop("faces_score"), r"'faces_score' is missing"),
    (
      lambda p: p["bodies"]["candidate"][3].__setitem__(0, float("nan")),
      r"'bodies.candidate'.*NaN",
    ),
    (lambda p: p["bodies"]["subset"][0].__setitem__(3, 40), r"'bodies.subset' must hold"),
    (lambda p: p["bodies"].update(candidate="abc"), r"'bodies.candidate' must be numeric"),
  ],
)
def test_malformed_pose_names_the_field(pose_tiny, edit, pattern):
  cases, _ = pose_tiny
  pose = _copy(cases["poses"]["full"])
  edit(pose)
  with pytest.raises(ValueError, match=pattern):
    P.render(pose, 32, 32)


def test_bad_inputs_are_named(pose_tiny, retarget_tiny):
  cases, arrays = pose_tiny
  full = cases["poses"]["full"]
  with pytest.raises(ValueError, match=r"expected a pose dict"):
    P.render([1, 2], 32, 32)
  with pytest.raises(ValueError, match=r"kp133.*\(133,3\).*\(132, 3\)"):
    P.from_coco_wholebody(np.zeros((132, 3)), 64, 64)
  with pytest.raises(ValueError, match=r"image must be uint8 \(H,W,3\)"):
    P.translate_reference(np.zeros((8, 8), np.uint8), full, full)
  with pytest.raises(ValueError, match=r"anchor must be a frame index"):
    P.retarget_to_pose(full, [full], anchor=3)
  with pytest.raises(ValueError, match=r"list of poses is empty"):
    P.pick_anchor_frame(full, [])
  rcases, rarrays = retarget_tiny
  with pytest.raises(ValueError, match=r"driving_kp133.*\(N,133,3\)"):
    P.retarget_to_reference(rarrays["s0.ref_kp133"], rarrays["s0.ref_kp133"], 480, 640)


def test_render_accepts_lists_and_arrays(pose_tiny):
  cases, _ = pose_tiny
  pose = cases["poses"]["lowconf"]
  as_arrays = P.as_pose(pose)
  np.testing.assert_array_equal(P.render(pose, 96, 64), P.render(as_arrays, 96, 64))


# --- pose files -----------------------------------------------------------------------------------


def test_keypoints_json_round_trip(tmp_path, retarget_tiny):
  cases, arrays = retarget_tiny
  path = tmp_path / "kp.json"
  P.write_keypoints_json(path, arrays["s1.drv_kp133"], cases["width"], cases["height"])
  frames, w, h = P.read_keypoints_json(path)
  assert (w, h) == (cases["width"], cases["height"])
  np.testing.assert_array_equal(frames, arrays["s1.drv_kp133"])
  doc = json.loads(path.read_text())
  assert doc["format"] == "o2a-pose" and doc["kind"] == "coco_wholebody" and doc["version"] == 1
  with pytest.raises(ValueError, match=r"holds kind 'coco_wholebody', expected 'dwpose'"):
    P.read_poses_json(path)
  doc["frames"][0] = doc["frames"][0][:-1]
  path.write_text(json.dumps(doc))
  with pytest.raises(ValueError, match=r"frames"):
    P.read_keypoints_json(path)
  path.write_text(json.dumps({"frames": []}))
  with pytest.raises(ValueError, match=r"not an o2a-pose file"):
    P.read_keypoints_json(path)


def test_poses_json_round_trip(tmp_path, retarget_tiny):
  cases, _ = retarget_tiny
  poses = cases["scenarios"][0]["drv_dwposes"]
  path = tmp_path / "poses.json"
  P.write_poses_json(path, poses, cases["width"], cases["height"])
  read, w, h = P.read_poses_json(path)
  assert (w, h) == (cases["width"], cases["height"]) and len(read) == len(poses)
  for got, want in zip(read, poses):
    _assert_pose_close(got, want, "pose", atol=0)
  assert not list(tmp_path.glob(".*")), "no temporary files left behind"


def test_official_npy_reads_pose_dicts(tmp_path, pose_tiny):
  cases, _ = pose_tiny
  poses = [P.as_pose(cases["poses"][k]) for k in ("full", "halfbody")]
  path = tmp_path / "clip_pose.npy"
  arr = np.empty(len(poses), dtype=object)
  arr[:] = poses
  np.save(path, arr, allow_pickle=True)
  read = P.read_official_npy(path)
  assert len(read) == 2
  for got, want in zip(read, poses):
    _assert_pose_close(got, want, "pose", atol=0)
  np.testing.assert_array_equal(P.render(read[1], 48, 32), P.render(poses[1], 48, 32))


def test_official_raw_npy(tmp_path):
  rng = np.random.default_rng(0)
  raw = {"candidate": rng.uniform(1, 60, (1, 134, 2)), "score": rng.uniform(0, 1, (1, 134))}
  path = tmp_path / "pool_raw.npy"
  arr = np.empty(1, dtype=object)
  arr[0] = raw
  np.save(path, arr, allow_pickle=True)
  (item,) = P.read_official_npy(path)
  pose = P.from_dwpose_raw(item, 64, 48)
  score = raw["score"][0]
  np.testing.assert_allclose(pose["bodies"]["candidate"], raw["candidate"][0, :18] / [48, 64])
  assert np.array_equal(pose["bodies"]["subset"][0] >= 0, score[:18] > 0.3)
  assert np.all((pose["hands"][0, :, 0] == -1) == (score[92:113] < 0.3))


def test_official_npy_refuses_code_and_plain_arrays(tmp_path):
  class Payload:
    def __reduce__(self):
      return (os.getcwd, ())

  path = tmp_path / "evil_pose.npy"
  with open(path, "wb") as f:
    np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": (1,)})
    f.write(pickle.dumps([Payload()]))
  with pytest.raises(ValueError, match=r"refusing to load posix.getcwd|refusing to load os"):
    P.read_official_npy(path)
  plain = tmp_path / "plain.npy"
  np.save(plain, np.zeros((4, 133, 3)))
  with pytest.raises(ValueError, match=r"plain float64 array"):
    P.read_official_npy(plain)
