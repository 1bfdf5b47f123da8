"""Pose preprocessing of the official inference (spec §6).

Rendering, translation, estimator conversion, retargeting, pose files.

numpy and OpenCV only. The public names follow the contract's "Pose" section:

- `render(pose, height, width, *, without_face, face_change, head_change)`: official
  `draw_pose_aligned`.
- `translate_reference(image, ref_pose, driving_pose)`: official `warp_ref_to_pose`.
"""

from o2a_jax.pose.render import render
from o2a_jax.pose.translate import body_scale_ratio, translate_reference

__all__ = ["body_scale_ratio", "render", "translate_reference"]
