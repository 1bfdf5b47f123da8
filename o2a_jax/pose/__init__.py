"""Pose preprocessing of the official inference (official inference preprocessing), numpy and OpenCV
only.

Public API (contract "Pose" section):

- `render(pose, height, width, *, without_face, face_change, head_change, drawing)`: the official
  `draw_pose_aligned`, uint8 (H,W,3) RGB; `drawing="viewing"` (of `DRAWINGS`, checked by
  `check_drawing`) draws continuous lines at small sizes (the puppet toy's model input).
- `translate_reference(image, ref_pose, driving_pose, *, drawing)`: the official `warp_ref_to_pose`.
- `from_coco_wholebody(kp133, width, height)`: estimator keypoints -> pose dict.
- `retarget_to_reference(ref_kp133, driving_kp133, width, height, *, anchor=0)`: the official
  `align_to_reference`.
- `retarget_to_pose(ref_pose, driving_poses, *, anchor=0, reproduce_official=False)`: the official
  `align_to_pose`, with its hand-assignment bug (official bug: align_to_pose hand assignment) fixed
  unless `reproduce_official`.
- `pick_anchor_frame(ref_pose, driving_poses)`: the official `pick_good_source_frame`.
- Files: `read_official_npy`, `read_keypoints_json` / `write_keypoints_json`, `read_poses_json` /
  `write_poses_json` (format in `o2a_jax.pose.formats`).

Pose dicts are described in `o2a_jax.pose.schema`; malformed ones raise ValueError naming the field.
"""

from o2a_jax.pose.anchor import pick_anchor_frame
from o2a_jax.pose.coco import from_coco_wholebody
from o2a_jax.pose.formats import (
  from_dwpose_raw,
  read_keypoints_json,
  read_official_npy,
  read_poses_json,
  write_keypoints_json,
  write_poses_json,
)
from o2a_jax.pose.render import DRAWINGS, check_drawing, render
from o2a_jax.pose.retarget_pose import retarget_to_pose
from o2a_jax.pose.retarget_reference import retarget_to_reference
from o2a_jax.pose.schema import as_pose
from o2a_jax.pose.translate import body_scale_ratio, translate_reference

__all__ = [
  "DRAWINGS",
  "as_pose",
  "body_scale_ratio",
  "check_drawing",
  "from_coco_wholebody",
  "from_dwpose_raw",
  "pick_anchor_frame",
  "read_keypoints_json",
  "read_official_npy",
  "read_poses_json",
  "render",
  "retarget_to_pose",
  "retarget_to_reference",
  "translate_reference",
  "write_keypoints_json",
  "write_poses_json",
]
