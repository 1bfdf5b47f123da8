"""The `config.data` section: per-stage sampling and augmentation settings (official training
recipe).

`get_data_config(stage)` returns the official recipe's values for stage 1, 2 or 3; configs in
`configs/` embed it as `config.data` and override fields with dotted flags
(`--config.data.change_pose=0.0`). The data pipeline reads only this section.
"""

from __future__ import annotations

import dataclasses

import ml_collections as mlc

from data_pipeline import augment
from o2a_jax import config_lib
from o2a_jax.pose.render import check_drawing

# Per stage: (ref drop, pose+ref drop, face-centred crop, zoom, ref keep, change pose,
#             hand mask, only_ref, i2v, resolution buckets, 768 probability, 512 image prob).
_STAGES = {
  1: dict(
    refimg_cfg=0.2,
    pose_cfg=0.0,
    refimg_crop=0.5,
    zoomin=0.0,
    ref_keep=0.0,
    change_pose=0.0,
    hand_mask=False,
    only_ref=True,
    i2v=0.2,
    buckets="mochi",
  ),
  2: dict(
    refimg_cfg=0.1,
    pose_cfg=0.1,
    refimg_crop=0.5,
    zoomin=0.1,
    ref_keep=0.2,
    change_pose=0.7,
    hand_mask=True,
    only_ref=False,
    i2v=0.0,
    buckets="768",
  ),
  3: dict(
    refimg_cfg=0.1,
    pose_cfg=0.1,
    refimg_crop=0.3,
    zoomin=0.1,
    ref_keep=0.3,
    change_pose=0.5,
    hand_mask=True,
    only_ref=False,
    i2v=0.0,
    buckets="768_v2",
  ),
}


def get_data_config(stage: int = 2) -> mlc.ConfigDict:
  if stage not in _STAGES:
    raise KeyError(f"unknown training stage {stage!r}; choose 1, 2 or 3")
  c = mlc.ConfigDict()
  c.stage = stage
  c.source = ""  # dataset folder written by `o2a data build` (ArrayRecord shards); "" = none
  # Folder holding pose-pool records for face enhancement; "" = the pool records of `source`
  # (face enhancement is off when there are none).
  c.pose_pool = ""
  c.global_batch = 8  # official: batch 1 per GPU x 8 GPUs
  c.frames = 29  # pixel frames of a video sample (8 latent frames)
  c.train_fps = 16
  c.one_more_second = True
  c.image_ratio = 1 / 7  # image-group rows : all rows (official "vid:img = 6:1")
  c.update(_STAGES[stage])
  c.without_face_prob = 0.2  # faces omitted from the drawn poses, per clip
  # How poses are drawn (`o2a_jax.pose.render`'s DRAWINGS): "official" (a 2160-px canvas resized
  # bilinearly, what the released checkpoints saw); "viewing" (a canvas twice the frame,
  # area-averaged): continuous lines at a few dozen pixels, where the official drawing is broken
  # dots (the puppet toy). Inference must draw as training did (`o2a animate --pose-drawing`).
  c.pose_drawing = "official"
  c.limb_change_prob = 0.4
  c.face_change_prob = 0.7
  c.ref_noise_prob = 0.5  # conditional_clear_ratio
  c.ref_noise_mean = -3.0
  c.ref_noise_std = 0.5
  # The official code's bugs are reproduced only when this is True (default False = fixed): the
  # double-exp reference noise sigma = exp(exp(N)) instead of exp(N); the image-augmentation branch
  # quirks (a second draw for the reference drop, no return after the pose drop, the reference
  # zoomed twice and its pose never); the round() stride of bucket eligibility and the two-second
  # `one_more_second` (int vs round frame stride). The empty-pose-list crash (an empty pose list
  # unpacked into three values) is never reproduced.
  c.reproduce_official = False
  c.worker_count = 0  # Grain multiprocessing workers; 0 = in-process
  c.read_threads = 1  # threads building samples in each process (Grain ReadOptions)
  c.read_buffer = 2  # samples prefetched by those threads
  # Bucket sizes and the eligibility threshold are multiplied by this (rounded to multiples of
  # 16); 1.0 = the official 512/768 tables. Smaller values are for tests and CPU smoke runs.
  c.bucket_scale = 1.0
  # The reference pose is drawn without face in stage 1 (DR:486) and at inference; stages 2-3
  # follow the per-clip without_face draw (D3:584-589).
  c.ref_pose_without_face = stage == 1
  c.max_skipped_fraction = 0.01  # corrupt records tolerated before the run stops
  c.seed = 43
  return c


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """The `config.data` section, typed and frozen: built once at the pipeline's entry
  (`DataConfig.from_config`); everything below it reads these values, never the ConfigDict.
  Field meanings are the comments of `get_data_config`."""

  stage: int
  source: str
  pose_pool: str
  global_batch: int
  frames: int
  train_fps: int
  one_more_second: bool
  image_ratio: float
  refimg_cfg: float
  pose_cfg: float
  refimg_crop: float
  zoomin: float
  ref_keep: float
  change_pose: float
  hand_mask: bool
  only_ref: bool
  i2v: float
  buckets: str
  without_face_prob: float
  limb_change_prob: float
  face_change_prob: float
  ref_noise_prob: float
  ref_noise_mean: float
  ref_noise_std: float
  reproduce_official: bool
  worker_count: int
  read_threads: int
  read_buffer: int
  bucket_scale: float
  ref_pose_without_face: bool
  max_skipped_fraction: float
  seed: int
  # Optional, so that configs saved before the key existed still load (they drew officially).
  pose_drawing: str = "official"

  # Keys of `config.data` that belong to other sources (the built-in synthetic one).
  OTHER_SOURCES = ("synthetic",)

  @property
  def masking_odds(self) -> augment.MaskingOdds:
    """The reference-masking probabilities, as the augmentation functions take them."""
    return augment.MaskingOdds(
      pose_drop=self.pose_cfg, ref_drop=self.refimg_cfg, crop=self.refimg_crop,
      zoom=self.zoomin, keep=self.ref_keep,
    )  # fmt: skip

  @classmethod
  def from_config(cls, section) -> DataConfig:
    """From a `config.data` ConfigDict (or a DataConfig); unknown or missing keys are named."""
    if isinstance(section, cls):
      return section
    out = config_lib.from_section(cls, section, "data", ignore=cls.OTHER_SOURCES)
    check_drawing(out.pose_drawing, "config.data.pose_drawing")
    return out
