"""The puppet world: procedural characters, motions and the official on-disk training layout.

A seeded, synthetic animation dataset with exact pose ground truth (issue 9): `PuppetSpec`
(identity), `motion.make_motion` (joint angles over time), `skeleton` (kinematics and
COCO-WholeBody keypoints), `draw` (frames) and `world` (the writer of spec §7.2's layout).
"""
