"""ONNX pose estimation: pre- and post-processing checked with tiny ONNX models built here whose
outputs are known constants (box decoding, NMS, person choice, SimCC and heat-map keypoint
decoding, mapping back to image pixels), and the "no person" error."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from o2a_jax.pose import estimate as est  # noqa: E402


def const_model(path, input_hw, outputs: dict[str, np.ndarray]):
  """An ONNX model with input (1,3,h,w) whose outputs are the given constants (+ 0 * input)."""
  nodes = [helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0)]
  nodes.append(helper.make_node("Mul", ["s", "zero"], ["z"]))
  inits = [numpy_helper.from_array(np.zeros((), np.float32), "zero")]
  outs = []
  for name, value in outputs.items():
    inits.append(numpy_helper.from_array(value.astype(np.float32), f"{name}_c"))
    nodes.append(helper.make_node("Add", [f"{name}_c", "z"], [name]))
    outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)))
  graph = helper.make_graph(
    nodes,
    "g",
    [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, *input_hw])],
    outs,
    initializer=inits,
  )
  model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
  model.ir_version = 8
  onnx.save(model, str(path))
  return path


def yolox_output(boxes):
  """Raw YOLOX (1, 84, 6) output for a 64x64 input: boxes = [(stride, gx, gy, w, h, obj[, dx])],
  centred at ((gx + dx) * stride, (gy + 0.5) * stride), dx = 0.5 by default."""
  out = np.full((84, 6), -20.0, np.float32)
  out[:, 4:] = 0.0
  offsets = {8: 0, 16: 64, 32: 80}
  for stride, gx, gy, w, h, obj, *dx in boxes:
    i = offsets[stride] + gy * (64 // stride) + gx
    out[i] = [dx[0] if dx else 0.5, 0.5, np.log(w / stride), np.log(h / stride), obj, 1.0]
  return out[None]


def test_yolox_decode_nms_and_largest_person(tmp_path):
  # Two overlapping boxes (the weaker is suppressed) and a separate, larger one.
  out = yolox_output(
    [(8, 2, 3, 16, 16, 0.9), (8, 3, 3, 14, 16, 0.8, -0.5), (16, 2, 1, 24, 40, 0.7)]
  )
  det = est.Detector(const_model(tmp_path / "det.onnx", (64, 64), {"out": out}))
  assert det.kind == "yolox" and det.input_hw == (64, 64)
  image = np.zeros((32, 48, 3), np.uint8)  # letterbox scale 64/48, top-left aligned
  boxes, scores = det(image)
  r = 64 / 48
  want = np.array([[12, 20, 28, 36], [28, 4, 52, 44]]) / r
  want = np.clip(want, 0, [48, 32, 48, 32])
  np.testing.assert_allclose(boxes, want, atol=1e-4)
  np.testing.assert_allclose(scores, [0.9, 0.7], atol=1e-6)
  x, scale, pad = det.preprocess(np.full((32, 48, 3), 7, np.uint8))
  assert scale == r and pad == (0.0, 0.0)
  assert (x[0, :, :42] == 7).all() and (x[0, :, 43:] == 114).all()  # 32 * 4/3 = 42.7 rows


def test_yolo_end_to_end_centred_letterbox_and_person_index(tmp_path):
  rows = np.array(
    [[10, 20, 30, 60, 0.9, 0], [40, 20, 50, 40, 0.8, 0], [0, 0, 64, 64, 0.95, 1],
     [5, 5, 6, 6, 0.01, 0]], np.float32,
  )  # fmt: skip
  det = est.Detector(const_model(tmp_path / "yolo.onnx", (64, 64), {"out": rows[None]}))
  assert det.kind == "yolo" and det.bgr
  image = np.zeros((64, 32, 3), np.uint8)  # scale 1, padded 16 px left and right
  x, scale, pad = det.preprocess(np.full((64, 32, 3), 255, np.uint8))
  assert scale == 1 and pad == (16.0, 0.0)
  assert np.allclose(x[0, :, :, 16:48], 1.0) and np.allclose(x[0, :, :, :16], 114 / 255)
  boxes, scores = det(image)  # class 1 and the low score are dropped
  np.testing.assert_allclose(boxes, [[0, 20, 14, 60], [24, 20, 32, 40]])
  pose = const_model(tmp_path / "pose.onnx", (64, 48), {"heatmaps": np.ones((1, 133, 16, 12))})
  pe = est.PoseEstimator(tmp_path / "yolo.onnx", pose)
  np.testing.assert_allclose(pe.pick(boxes, "x"), boxes[0])  # the largest
  pe.person = 1
  np.testing.assert_allclose(pe.pick(boxes, "x"), boxes[1])  # second from the left
  pe.person = 2
  with pytest.raises(ValueError, match="only 2 people"):
    pe.pick(boxes, "x")


def test_no_person_found(tmp_path):
  det = const_model(tmp_path / "det.onnx", (64, 64), {"out": yolox_output([])})
  pose = const_model(tmp_path / "pose.onnx", (64, 48), {"heatmaps": np.ones((1, 133, 16, 12))})
  pe = est.PoseEstimator(det, pose)
  with pytest.raises(est.NoPersonError, match="no person found in frame 0 of clip"):
    pe.estimate_video(np.zeros((1, 40, 40, 3), np.uint8), what="clip", progress=False)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    est.PoseEstimator(tmp_path / "missing.onnx", pose)


def test_simcc_keypoints_map_back_to_pixels(tmp_path):
  rng = np.random.default_rng(0)
  ih, iw = 64, 48
  bins = rng.integers(0, 2 * iw, 133), rng.integers(0, 2 * ih, 133)
  sx, sy = np.zeros((1, 133, 2 * iw)), np.zeros((1, 133, 2 * ih))
  sx[0, np.arange(133), bins[0]] = 0.8
  sy[0, np.arange(133), bins[1]] = 0.6
  model = est.PoseModel(const_model(tmp_path / "p.onnx", (ih, iw), {"x": sx, "y": sy}))
  assert model.kind == "simcc" and not model.bgr
  box = (10.0, 20.0, 40.0, 100.0)  # 30 x 80, padded x1.25 -> 37.5 x 100, aspect-fixed to 75 x 100
  kp = model(np.zeros((120, 80, 3), np.uint8), box)
  assert kp.shape == (133, 3)
  np.testing.assert_allclose(kp[:, 2], 0.6)
  crop = np.stack(bins, -1) / 2.0  # input-crop pixels
  center, size = np.array([25.0, 60.0]), np.array([75.0, 100.0])
  np.testing.assert_allclose(kp[:, :2], crop / [iw, ih] * size + center - size / 2, atol=1e-4)
  m = est.crop_affine(center, size, (iw, ih))  # the crop maps the keypoints back onto the bins
  np.testing.assert_allclose(kp[:, :2] @ m[:, :2].T + m[:, 2], crop, atol=1e-4)


def test_heatmap_dark_decoding(tmp_path):
  h, w = 16, 12
  yy, xx = np.mgrid[:h, :w]
  rng = np.random.default_rng(1)
  true = np.stack([rng.uniform(3, w - 4, 133), rng.uniform(3, h - 4, 133)], -1)
  hm = np.exp(-((xx - true[:, 0, None, None]) ** 2 + (yy - true[:, 1, None, None]) ** 2) / 4.5)
  coords, scores = est.heatmap_decode(hm)
  assert np.abs(coords - true).max() < 0.15  # DARK recovers the sub-pixel peak
  plain, _ = est.heatmap_decode(hm, unbiased=False)
  assert np.abs(coords - true).mean() < np.abs(plain - true).mean()
  model = est.PoseModel(const_model(tmp_path / "hm.onnx", (64, 48), {"hm": hm[None]}))
  assert model.kind == "heatmap" and model.bgr
  kp = model(np.zeros((100, 100, 3), np.uint8), (20, 10, 60, 90))
  center, size = np.array([40.0, 50.0]), np.array([75.0, 100.0])
  np.testing.assert_allclose(kp[:, :2], coords / [w, h] * size + center - size / 2, atol=1e-4)
  np.testing.assert_allclose(kp[:, 2], scores, atol=1e-6)


def test_pose_extract_cli(tmp_path):
  from o2a_jax import cli
  from o2a_jax.inference.load import read_pose_file
  from o2a_jax.io.video import write_video

  rows = np.array([[8, 4, 56, 60, 0.9, 0]], np.float32)
  det = const_model(tmp_path / "det.onnx", (64, 64), {"out": rows[None]})
  hm = np.zeros((1, 133, 16, 12))
  rng = np.random.default_rng(2)
  hm[0, np.arange(133), rng.integers(2, 14, 133), rng.integers(2, 10, 133)] = 0.9
  pose = const_model(tmp_path / "pose.onnx", (64, 48), {"hm": hm})
  write_video(
    tmp_path / "clip.gif",
    np.repeat(np.arange(0, 200, 50, dtype=np.uint8), 64 * 64 * 3).reshape(4, 64, 64, 3),
  )
  common = ["--det-model", str(det), "--pose-model", str(pose), "--no-progress"]
  out = tmp_path / "clip.json"
  argv = ["pose", "extract", str(tmp_path / "clip.gif"), "--out", str(out), "--stride", "2"]
  assert cli.main([*argv, *common]) == 0
  poses = read_pose_file(out)
  assert poses.kp133.shape == (2, 133, 3) and (poses.width, poses.height) == (64, 64)
  assert (poses.kp133[..., :2] >= 0).all() and (poses.kp133[..., 2] == np.float32(0.9)).all()
  npy = tmp_path / "clip.npy"
  assert cli.main([*argv[:4], str(npy), *argv[5:], *common]) == 0
  dicts = read_pose_file(npy).dicts
  assert len(dicts) == 2 and dicts[0]["bodies"]["candidate"].shape == (18, 2)
