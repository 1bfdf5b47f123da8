"""Where inference poses come from: pose files, or images and videos through local ONNX models.

`o2a animate`, `o2a transfer` and `o2a pose extract|render` read their poses here. Pose files
(.json of `o2a_jax.pose.formats`, official .npy) need nothing else; images and videos need the
pose models named in `PoseModels` (see `o2a_jax.pose.estimate`; nothing is downloaded).
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from tqdm import tqdm

from o2a_jax import pose as pose_lib
from o2a_jax.inference.load import POSE_SUFFIXES, read_pose_file, write_pose_npy
from o2a_jax.inference.prepare import Poses, driving_dicts, frame_indices, resize_crop
from o2a_jax.io.output_paths import check_output
from o2a_jax.io.video import read_image, read_video
from o2a_jax.pose.coco import dwpose_from_meta, metas_from_kp133

POSE_FILE_FPS = 16.0  # pose files carry no frame rate; the model's training rate


@dataclasses.dataclass(frozen=True)
class PoseModels:
  """The local ONNX pose-estimation models (both files, or none: pose files only)."""

  det_model: str | None = None  # person detector (YOLOX of DWPose, or YOLOv10/v8)
  pose_model: str | None = None  # whole-body pose model (DWPose SimCC, or ViTPose heat maps)
  det_kind: str = "auto"  # "auto" | "yolox" | "yolo"
  pose_kind: str = "auto"  # "auto" | "simcc" | "heatmap"
  person: int | None = None  # with several people: the k-th from the left (None: the largest)

  def estimator(self, why: str):
    """A `PoseEstimator`; `why` names what needs it in the error when the models are missing."""
    from o2a_jax.pose.estimate import PoseEstimator

    if not (self.det_model and self.pose_model):
      raise ValueError(
        f"{why} needs pose estimation: give --det-model and --pose-model (ONNX files)"
      )
    return PoseEstimator(
      self.det_model,
      self.pose_model,
      det_kind=self.det_kind,
      pose_kind=self.pose_kind,
      person=self.person,
    )


def is_pose_file(path) -> bool:
  return pathlib.Path(path).suffix.lower() in POSE_SUFFIXES


def _frames(path, *, start: int, count: int | None, stride: int):
  """The selected frames (F, H, W, 3) uint8 of a video, GIF, image or frame folder, and its fps."""
  stop = None if count is None else start + count * stride
  frames, fps = read_video(path, max_frames=stop)
  idx = frame_indices(len(frames), start=start, count=count, stride=stride)
  return frames[idx], fps


def driving_poses(
  path, ref_hw: tuple[int, int], *, start: int = 0, count: int | None = None, stride: int = 1,
  models: PoseModels = PoseModels(), progress: bool = True,
) -> tuple[Poses, float]:  # fmt: skip
  """The driving poses of a pose file or a video, and their frame rate.

  As officially, driving video frames are centre-cropped and resized to the reference size
  `ref_hw` before pose estimation; pose files keep their own size and run at `POSE_FILE_FPS`.
  """
  if is_pose_file(path):
    poses = read_pose_file(path)
    return poses.select(frame_indices(len(poses), start=start, count=count, stride=stride)), (
      POSE_FILE_FPS
    )
  frames, fps = _frames(path, start=start, count=count, stride=stride)
  h, w = ref_hw
  frames = np.stack([resize_crop(f, h, w) for f in frames])
  estimator = models.estimator("a driving video")
  kp = estimator.estimate_video(frames, what=f"driving video {str(path)!r}", progress=progress)
  return Poses(kp133=kp, width=w, height=h), fps / stride


def reference(path, *, pose_file=None, models: PoseModels = PoseModels()):
  """(uint8 image, its pose) of the reference image at `path`: the pose from `pose_file` when
  given, else estimated on the image."""
  image = read_image(path)
  if pose_file:
    return image, read_pose_file(pose_file)
  estimator = models.estimator("the reference image (or give --ref-pose)")
  kp = estimator.estimate(image, f"reference image {str(path)!r}")
  return image, Poses(kp133=kp[None], width=image.shape[1], height=image.shape[0])


def target_poses(path, *, frame: int = 0, models: PoseModels = PoseModels()) -> Poses:
  """One target pose for image pose transfer: frame `frame` of a pose file, or an image's."""
  if is_pose_file(path):
    poses = read_pose_file(path)
    if not 0 <= frame < len(poses):
      raise ValueError(f"--pose-frame {frame} is outside the {len(poses)} frames of {str(path)!r}")
    return poses.select(slice(frame, frame + 1))
  image = read_image(path)
  kp = models.estimator("a target pose image").estimate(image, f"pose image {str(path)!r}")
  return Poses(kp133=kp[None], width=image.shape[1], height=image.shape[0])


def extract(
  path, out, *, kind: str = "coco_wholebody", start: int = 0, count: int | None = None,
  stride: int = 1, models: PoseModels = PoseModels(), overwrite: bool = False,
  progress: bool = True,
) -> tuple[int, int, int]:  # fmt: skip
  """Estimates the poses of a video/image and writes them to `out` (.json or official .npy).

  `kind` picks the JSON content: "coco_wholebody" (keypoints in pixels) or "dwpose" (DWPose-style
  dicts, as the .npy always holds). Returns (frames, width, height).
  """
  out = pathlib.Path(out)
  if out.suffix not in (".json", ".npy"):
    raise ValueError(f"--out {str(out)!r}: use .json (o2a-pose) or .npy (official pose dicts)")
  check_output(out, overwrite=overwrite)
  estimator = models.estimator("pose extract")
  frames, _ = _frames(path, start=start, count=count, stride=stride)
  kp = estimator.estimate_video(frames, what=repr(str(path)), progress=progress)
  h, w = frames.shape[1:3]
  if out.suffix == ".json" and kind == "coco_wholebody":
    pose_lib.write_keypoints_json(out, kp, w, h)
  else:
    dicts = [dwpose_from_meta(m) for m in metas_from_kp133(kp, w, h, repr(str(path)))]
    if out.suffix == ".json":
      pose_lib.write_poses_json(out, dicts, w, h)
    else:
      write_pose_npy(out, dicts)
  return len(kp), w, h


def render_file(
  path, *, size: tuple[int, int] | None = None, start: int = 0, count: int | None = None,
  stride: int = 1, without_face: bool = False, face_change: bool = False,
  head_change: bool = False, drawing: str = "official", progress: bool = True,
) -> np.ndarray:  # fmt: skip
  """The poses of a pose file drawn as the official renderer does (or with another of
  `pose.render`'s DRAWINGS): uint8 (F, H, W, 3) at `size` (H, W), default the size the file
  records."""
  poses = read_pose_file(path)
  poses = poses.select(frame_indices(len(poses), start=start, count=count, stride=stride))
  if size is not None:
    h, w = size
    if h < 1 or w < 1:
      raise ValueError(f"--size {h}x{w} must be positive")
  elif poses.width and poses.height:
    h, w = poses.height, poses.width
  else:
    raise ValueError(f"{str(path)!r} does not record its frame size: give --size HxW")
  flags = dict(
    without_face=without_face, face_change=face_change, head_change=head_change, drawing=drawing
  )
  dicts = driving_dicts(poses, w, h)
  bar = tqdm(dicts, desc="rendering poses", unit="frame", disable=not progress)
  return np.stack([pose_lib.render(p, h, w, **flags) for p in bar])
