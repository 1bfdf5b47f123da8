"""A small synthetic training source as a Grain pipeline (tests, smoke runs, benchmarks).

`--config.data.source=synthetic` feeds the loop from here instead of ArrayRecord files. Samples
follow the batch schema of `data_pipeline.batch` and are a pure function of (seed, sample id), so
any process can rebuild any sample: a fixed small dataset of `num_samples` clips, reshuffled every
epoch, on which the loss of a working trainer falls.

Process sharding keeps global batches identical for any process count: the stream of samples
is cut into per-process batches of B_local = global_batch / process_count consecutive samples,
and process p takes local batches p, p + P, p + 2P, ... Global batch k is therefore samples
[k G, (k+1) G) in process order, whatever P is. The iterator is a Grain `DatasetIterator`, so
`get_state()`/`set_state()` are Grain's (checkpointed with the model by `checkpoints.py`).
"""

from __future__ import annotations

import grain
import ml_collections as mlc
import numpy as np

from o2a_jax.vae.strides import latent_frames


def make_sample(index: int, *, frames: int, height: int, width: int, seed: int) -> dict:
  """Sample `index` of the synthetic set: smooth moving colour blobs with a matching 'pose'.

  The video is a low-frequency pattern drifting over time (learnable structure for the VAE
  latents); the pose video is a coarse function of the same motion; the reference is the first
  frame with a random rectangle masked out; face and OCR masks are rectangles.
  """
  rng = np.random.default_rng([seed, index])
  t = latent_frames(frames)
  yy, xx = np.meshgrid(
    np.linspace(-1, 1, height, dtype=np.float32),
    np.linspace(-1, 1, width, dtype=np.float32),
    indexing="ij",
  )
  freq = rng.uniform(0.5, 2.0, size=(3, 2)).astype(np.float32)
  phase = rng.uniform(0, 2 * np.pi, size=3).astype(np.float32)
  speed = rng.uniform(-0.3, 0.3, size=2).astype(np.float32)
  video = np.empty((frames, height, width, 3), np.float32)
  pose = np.empty_like(video)
  for f in range(frames):
    dx, dy = speed * f
    for c in range(3):
      video[f, ..., c] = np.sin(
        freq[c, 0] * np.pi * (xx + dx) + freq[c, 1] * np.pi * (yy + dy) + phase[c]
      )
    # Pose: a bright blob at the pattern's drifting centre on black.
    d2 = (xx - dx) ** 2 + (yy - dy) ** 2
    pose[f] = (2.0 * np.exp(-d2 / 0.05) - 1.0)[..., None]
  video = np.clip(0.9 * video, -1.0, 1.0)
  ref = video[:1].copy()
  mask = np.zeros((1, height, width, 1), np.float32)
  h0, w0 = rng.integers(0, height // 2), rng.integers(0, width // 2)
  mask[:, h0 : h0 + height // 4, w0 : w0 + width // 4] = 1.0
  ref = np.where(mask > 0.5, 0.0, ref).astype(np.float32)
  face = np.zeros((t, height, width), np.float32)
  fy, fx = rng.integers(0, height - height // 4), rng.integers(0, width - width // 4)
  face[:, fy : fy + height // 4, fx : fx + width // 4] = 1.0
  ocr = np.ones((t, height, width), np.float32)
  if rng.uniform() < 0.5:
    ocr[:, : height // 8, : width // 2] = 0.0
  return {
    "video": video,
    "pose_video": pose.astype(np.float32),
    "ref_image": ref,
    "ref_mask": mask,
    "ref_pose": pose[:1].copy(),
    "face_mask": face,
    "ocr_mask": ocr,
    "pose_dropped": np.asarray(False),
  }


class _Sample:
  """Picklable sample map (Grain workers need top-level callables)."""

  def __init__(self, frames, height, width, seed):
    self.kw = dict(frames=frames, height=height, width=width, seed=seed)

  def __call__(self, index):
    return make_sample(int(index), **self.kw)


class _Poison:
  """Makes the video of every local batch at index >= `start` NaN (tests of the skip logic)."""

  def __init__(self, start):
    self.start = start

  def __call__(self, index, batch):
    if 0 <= self.start <= index:
      batch = dict(batch, video=np.full_like(batch["video"], np.nan))
    return batch


def synthetic_dataset(
  data_config: mlc.ConfigDict, *, process_index: int = 0, process_count: int = 1
) -> grain.MapDataset:
  """The per-process MapDataset of batches (random access: `ds[k]` is local batch k)."""
  syn = data_config.synthetic
  if data_config.global_batch % process_count:
    raise ValueError(
      f"data.global_batch {data_config.global_batch} is not divisible by the "
      f"{process_count} processes; choose a multiple"
    )
  if (data_config.frames - 1) % 4:
    raise ValueError(f"data.frames must be 4k+1, got {data_config.frames}")
  local = data_config.global_batch // process_count
  ds = (
    grain.MapDataset.range(syn.num_samples)
    .shuffle(seed=syn.seed)  # a new permutation every epoch (Grain reseeds per epoch)
    .repeat()
    .map(_Sample(data_config.frames, syn.height, syn.width, syn.seed))
    .batch(local, drop_remainder=True)
  )
  ds = ds[process_index::process_count]
  if syn.poison_from >= 0:
    ds = ds.map_with_index(_Poison(syn.poison_from))
  return ds


def train_iterator(
  data_config: mlc.ConfigDict, *, process_index: int = 0, process_count: int = 1
) -> grain.DatasetIterator:
  """A checkpointable iterator of per-process batches (dicts of numpy arrays)."""
  ds = synthetic_dataset(data_config, process_index=process_index, process_count=process_count)
  return ds.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0)).__iter__()
