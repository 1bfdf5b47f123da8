"""The Grain training pipeline: epoch plans, per-sample loading, batching, state and metrics.

Determinism. Epoch e is planned from (seed, e) alone: every record gets a bucket (resolution,
aspect-ratio entry, frame count; official bucketing and image/video mixing), image pairs are mixed
in at `image_ratio`, each bucket's samples are shuffled and cut into global batches of
`global_batch` (the remainder of a bucket is dropped for the epoch), and the batches are shuffled.
Global batch s is the s-th batch of the concatenated epochs; its row j is built with the RNG
`np.random.default_rng([seed, s·G + j])`. Process p of P yields rows [p·G/P, (p+1)·G/P) of every
global batch, so the same seed and step give the same samples whatever the number of hosts and Grain
workers, and each record is read once per epoch across hosts.

Corrupt records (undecodable bytes, images, poses; clips too short for their bucket) are skipped:
the slot is filled by the next record of the same bucket group in the epoch plan (deterministic),
and the skip is counted. `TrainIterator.metrics()` reports the counts; once at least
`ceil(1/max_skipped_fraction)` records were read (at most 1000), a skipped fraction above
`max_skipped_fraction` raises `CorruptDataError` (a ValueError: `o2a train` reports it in one line).

Checkpointing the iterator with Orbax (the state holds Grain's state plus the skip counters):

    import orbax.checkpoint as ocp
    from data_pipeline import checkpoint_save_args, checkpoint_restore_args
    mngr.save(step, args=ocp.args.Composite(params=..., data=checkpoint_save_args(it)))
    mngr.restore(step, args=ocp.args.Composite(params=..., data=checkpoint_restore_args(it)))

`it` must be built with the same config (including `worker_count`) and process layout as the saved
one: Grain restores into a different worker count silently wrongly (a verified Grain 0.2.18
pitfall), so `set_state` refuses a state saved under a different layout.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
from collections import OrderedDict

import grain
import numpy as np

from data_pipeline import buckets
from data_pipeline.batch import FIELDS
from data_pipeline.config import DataConfig
from data_pipeline.records import CorruptDataError, CorruptRecordError
from data_pipeline.sample import pair_sample, video_sample
from data_pipeline.tfds_dataset import open_source

log = logging.getLogger(__name__)

_MAX_REPLACEMENTS = 16
_EPOCH_CACHE = 3
_STATE_VERSION = 1


def _check_config(cfg: DataConfig) -> None:
  if not isinstance(cfg, DataConfig):
    raise TypeError(
      f"the data pipeline takes a typed DataConfig, got {type(cfg).__name__}; build it once with "
      "data_pipeline.config.DataConfig.from_config(config.data)"
    )
  if (cfg.frames - 1) % 4:
    raise ValueError(f"config.data.frames must be 4k+1, got {cfg.frames}")
  if cfg.global_batch < 1:
    raise ValueError(f"config.data.global_batch must be >= 1, got {cfg.global_batch}")
  if not 0.0 <= cfg.image_ratio < 1.0:
    raise ValueError(f"config.data.image_ratio must be in [0, 1), got {cfg.image_ratio}")
  buckets.bucket_config(cfg.buckets)


_MAX_SKIP_REPORTS = 20  # per loader (and worker process): the first skips are logged


class EpochPlanner:
  """Plans epochs (lists of global batches) from the record metadata; picklable, cached."""

  def __init__(self, cfg: DataConfig, clips_meta: dict, pairs_meta: dict):
    _check_config(cfg)
    self.cfg = cfg
    self.clips = clips_meta
    self.pairs = pairs_meta
    self.n_clips = 0 if not clips_meta else len(clips_meta["height"])
    self.n_pairs = 0 if not pairs_meta else len(pairs_meta["height"])
    if self.n_clips + self.n_pairs == 0:
      raise ValueError("the training dataset holds no clips and no image pairs")
    self._max_frames = self._clip_capacity()
    self._cache = OrderedDict()
    self._sizes = []  # batches in epochs 0, 1, ...
    if self.num_batches(0) == 0:
      raise ValueError(self._no_batch_message())

  def _no_batch_message(self) -> str:
    """Why epoch 0 has no batch, naming the setting to change (usually the bucket scale)."""
    cfg = self.cfg
    side = min(int(r) for r in buckets.bucket_config(cfg.buckets)) * float(cfg.bucket_scale)
    need = buckets.ELIGIBLE_FRACTION * side * side
    areas = [
      np.asarray(m["height"], np.float64) * np.asarray(m["width"], np.float64)
      for m in (self.clips, self.pairs)
      if m
    ]
    area = np.concatenate(areas) if areas else np.zeros(0)
    small = int((area < need).sum())
    hint = ""
    if small:
      typical = float(np.sqrt(np.median(area)))
      hint = (
        f"; {small} of them are smaller than the smallest bucket ({side:.0f} px at "
        f"data.bucket_scale={cfg.bucket_scale}): lower --config.data.bucket_scale (about "
        f"{typical / (side / float(cfg.bucket_scale)):.3g} fits their median size {typical:.0f} px)"
      )
    return (
      f"epoch 0 has no complete global batch of {cfg.global_batch}: too few samples per bucket "
      f"({self.n_clips} clips, {self.n_pairs} pairs{hint}); otherwise lower "
      "--config.data.global_batch or add data"
    )

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_cache"] = OrderedDict()
    return state

  def _clip_capacity(self) -> np.ndarray:
    """Longest clip (in sampled frames) each video supports, eligibility rule of official bucketing
    and image/video mixing/official bug: int vs round frame stride.

    Fixed: exactly the number of candidate frames `sample.candidate_frames` offers. Official:
    `(T_avail - 1) // round(fps/16) + 1` with `T_avail = min(end - start, 10 fps)`.
    """
    cfg, m = self.cfg, self.clips
    if not self.n_clips:
      return np.zeros(0, np.int64)
    fps = m["fps"].astype(np.float64)
    start, end, n = (m[k].astype(np.int64) for k in ("start_frame", "end_frame", "n_frames"))
    if cfg.reproduce_official:
      avail = np.minimum(end - start, (10 * fps).astype(np.int64))
      stride = np.maximum(np.round(fps / cfg.train_fps).astype(np.int64), 1)
      return np.maximum((avail - 1) // stride + 1, 0)
    stride = np.maximum((fps / cfg.train_fps).astype(np.int64), 1)
    if cfg.one_more_second:
      end = end + fps.astype(np.int64)
    end = np.minimum(end, n)
    span = end - 1 - (start + 1)
    return np.maximum(-(-span // stride), 0)  # len(range(start + 1, end - 1, stride))

  def _assign(self, rng, kind: int, index, height, width, multi_frame, groups: dict) -> None:
    """Vectorised per-sample bucket draw (resolution tried large to small, then frame count)."""
    cfg = self.cfg
    table = list(buckets.bucket_config(cfg.buckets).items())
    scale = float(cfg.bucket_scale)
    u = rng.random((len(index), len(table) + 1))
    done = np.zeros(len(index), bool)
    for k, (res, (p_res, p_keep)) in enumerate(table):
      side = int(res) * scale
      ok = ~done & (height * width >= buckets.ELIGIBLE_FRACTION * side * side) & (u[:, k] < p_res)
      done |= ok
      if not ok.any():
        continue
      entries = buckets.aspect_table(res, scale)
      ratios = np.array([r for r, _, _ in entries])
      entry = np.argmin(np.abs(height[ok, None] / width[ok, None] - ratios[None]), axis=1)
      frames = np.where(multi_frame[ok] & (u[ok, -1] < p_keep), cfg.frames, 1)
      members = np.stack([np.full(ok.sum(), kind), index[ok]], axis=1)
      for e in np.unique(entry):
        for f in np.unique(frames[entry == e]):
          sel = (entry == e) & (frames == f)
          key = (res, entries[e][1], entries[e][2], int(f))
          groups.setdefault(key, []).append(members[sel])

  def _plan(self, epoch: int) -> list:
    cfg = self.cfg
    rng = np.random.default_rng([cfg.seed, epoch, 0x0B0C])
    groups: dict[tuple, list] = {}
    if self.n_clips:
      self._assign(
        rng, 0, np.arange(self.n_clips), self.clips["height"].astype(np.float64),
        self.clips["width"].astype(np.float64), self._max_frames >= cfg.frames, groups,
      )  # fmt: skip
    if self.n_pairs:
      if self.n_clips:
        n_img = int(round(self.n_clips * cfg.image_ratio / (1.0 - cfg.image_ratio)))
        picks = (
          rng.permutation(self.n_pairs)[:n_img]
          if n_img <= self.n_pairs
          else rng.integers(0, self.n_pairs, n_img)
        )
      else:
        picks = rng.permutation(self.n_pairs)
      h, w = self.pairs["height"][picks], self.pairs["width"][picks]
      self._assign(rng, 1, picks, h.astype(np.float64), w.astype(np.float64),
                   np.zeros(len(picks), bool), groups)  # fmt: skip
    batches = []
    gb = cfg.global_batch
    for key in sorted(groups):
      members = np.concatenate(groups[key])
      members = members[rng.permutation(len(members))]
      for b in range(len(members) // gb):
        batches.append((key, members, b * gb))
    order = rng.permutation(len(batches))
    return [batches[j] for j in order]

  def epoch(self, e: int) -> list:
    if e not in self._cache:
      self._cache[e] = self._plan(e)
      while len(self._cache) > _EPOCH_CACHE:
        self._cache.popitem(last=False)
    return self._cache[e]

  def num_batches(self, e: int) -> int:
    while len(self._sizes) <= e:
      self._sizes.append(len(self.epoch(len(self._sizes))))
    return self._sizes[e]

  def locate(self, step: int) -> tuple[int, int]:
    """Global step -> (epoch, batch within the epoch)."""
    e, start = 0, 0
    while True:
      n = self.num_batches(e)
      if step < start + n:
        return e, step - start
      e, start = e + 1, start + n

  def slot(self, step: int, row: int) -> tuple:
    """(kind 0=clip 1=pair, record index, (res, H, W, F), group members, position)."""
    e, b = self.locate(step)
    key, members, offset = self.epoch(e)[b]
    kind, idx = members[offset + row]
    return int(kind), int(idx), key, members, offset + row


class SampleLoader:
  """Process-local sample counter i -> one sample (picklable Grain map function)."""

  def __init__(self, cfg: DataConfig, data_dir, pool_dir, process_index: int, process_count: int):
    _check_config(cfg)
    self.cfg = cfg
    self.clips = open_source(data_dir, "clip")  # a dataset folder or a TFDS dataset
    self.pairs = open_source(data_dir, "pair")
    pool_dir = pool_dir or data_dir
    self.pool = open_source(pool_dir, "pool")
    self.planner = EpochPlanner(cfg, self.clips.meta, self.pairs.meta)
    self.local_batch = cfg.global_batch // process_count
    self.process_index = process_index

  def _pool_pick(self, rng, ratio: float):
    """A random pool pose: pool A (H/W >= 1) or B, by the pool record's own aspect."""
    if not len(self.pool):
      return None
    hw = self.pool.meta["height"] / self.pool.meta["width"]
    group = np.flatnonzero((hw >= 1) == (ratio >= 1))
    group = group if len(group) else np.arange(len(self.pool))
    return self.pool.read(int(group[int(rng.integers(len(group)))]))

  def build(self, kind: int, idx: int, key: tuple, rng):
    _, h, w, frames = key
    pool = self._pool_pick if len(self.pool) else None
    if kind == 0:
      rec = self.clips.read(idx)
      return video_sample(rec, rng, self.cfg, h, w, frames, pool=pool)
    rec = self.pairs.read(idx)
    return pair_sample(rec, rng, self.cfg, h, w, pool=pool)

  def _report_skip(self, message: str) -> None:
    n = self.__dict__.get("_skip_reports", 0) + 1
    self._skip_reports = n
    if n <= _MAX_SKIP_REPORTS:
      log.warning("%s", message)
    elif n == _MAX_SKIP_REPORTS + 1:
      log.warning("more corrupt records skipped; the data/skipped_records metric counts them all")

  def global_sample(self, step: int, row: int):
    """(sample, info, skipped) of row `row` of global batch `step`."""
    kind, idx, key, members, pos = self.planner.slot(step, row)
    gidx = step * self.cfg.global_batch + row
    skipped = 0
    for attempt in range(_MAX_REPLACEMENTS + 1):
      rng = np.random.default_rng([self.cfg.seed, gidx, attempt])
      try:
        sample, info = self.build(kind, idx, key, rng)
        info.update(step=step, row=row, record=(kind, idx), key=key)
        return sample, info, skipped
      except CorruptRecordError as e:
        skipped += 1
        last = e
        self._report_skip(f"batch {step} row {row}: skipped a corrupt record ({e})")
        kind, idx = (int(v) for v in members[(pos + attempt + 1) % len(members)])
    raise CorruptDataError(
      f"{skipped} consecutive corrupt records while filling batch {step} row {row} (bucket "
      f"{key}); last error: {last}. Check the dataset with `o2a data build` output."
    )

  def __call__(self, i: int) -> dict:
    step, j = divmod(int(i), self.local_batch)
    sample, _, skipped = self.global_sample(step, self.process_index * self.local_batch + j)
    sample["_skipped"] = np.int32(skipped)
    return sample


class TrainIterator(grain.DatasetIterator):
  """Per-process training batches (dicts per `data_pipeline.batch`), with state and metrics."""

  def __init__(self, parent, *, cfg, process_index: int, process_count: int):
    super().__init__(parent)
    self._layout = [int(cfg.worker_count), int(process_index), int(process_count),
                    int(cfg.global_batch), int(cfg.seed)]  # fmt: skip
    self._max_frac = float(cfg.max_skipped_fraction)
    self._min_reads = min(1000, math.ceil(1 / self._max_frac)) if self._max_frac > 0 else 1
    self.samples = 0
    self.skipped = 0
    self.steps = 0

  def __next__(self) -> dict:
    batch = next(self._parent)
    skipped = int(np.sum(batch.pop("_skipped")))
    self.samples += len(batch["pose_dropped"])
    self.skipped += skipped
    self.steps += 1
    reads = self.samples + self.skipped
    if reads >= self._min_reads and self.skipped > self._max_frac * reads:
      raise CorruptDataError(
        f"data pipeline: {self.skipped} of {reads} records read were corrupt or unusable "
        f"({self.skipped / reads:.1%}), above config.data.max_skipped_fraction = "
        f"{self._max_frac}; the first ones are named in the log above; rebuild or clean the "
        "dataset (or raise the ceiling)"
      )
    return {k: batch[k] for k in FIELDS}

  def metrics(self) -> dict:
    reads = self.samples + self.skipped
    return {
      "data/samples": self.samples,
      "data/skipped_records": self.skipped,
      "data/skipped_fraction": self.skipped / reads if reads else 0.0,
    }

  def get_state(self) -> dict:
    return {
      "version": _STATE_VERSION,
      "layout": list(self._layout),
      "grain": self._parent.get_state(),
      "samples": self.samples,
      "skipped": self.skipped,
      "steps": self.steps,
    }

  def set_state(self, state: dict) -> None:
    if state.get("version") != _STATE_VERSION:
      raise ValueError(f"data iterator state version {state.get('version')!r} is not supported")
    if list(state["layout"]) != self._layout:
      raise ValueError(
        "data iterator state was saved with [worker_count, process_index, process_count, "
        f"global_batch, seed] = {state['layout']}, this iterator has {self._layout}; restore with "
        "the same data config and process layout"
      )
    self._parent.set_state(state["grain"])
    self.samples, self.skipped, self.steps = state["samples"], state["skipped"], state["steps"]


def _worker_init(worker_index: int, worker_count: int) -> None:
  # One OpenCV thread per worker process: the workers already use every core, and OpenCV's own
  # thread pool would oversubscribe them.
  import cv2

  cv2.setNumThreads(1)


def _mark_flags_parsed() -> None:
  # grain 0.2.18 reads an absl flag in its workers; plain scripts have not parsed flags
  # (google/grain#1355).
  from absl import flags

  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def train_iterator(data_config, *, process_index: int = 0, process_count: int = 1):
  """The training iterator of this process.

  Args:
    data_config: `config.data` (see `data_pipeline.config.get_data_config`); `source` is a dataset
      folder written by `o2a data build`, `pose_pool` an optional separate folder holding pose-pool
      records (default: the pool records of `source`, if any).
    process_index, process_count: this JAX process and the number of processes (pass
      `jax.process_index(), jax.process_count()`); each yields global_batch // process_count rows.

  Returns:
    A `TrainIterator` yielding dicts of float32 numpy arrays (`pose_dropped` bool) per
    `data_pipeline.batch`, with `get_state()` / `set_state()` and `metrics()`.
  """
  cfg = DataConfig.from_config(data_config)  # typed once here; nothing below reads the ConfigDict
  if not cfg.source:
    raise ValueError(
      "config.data.source is empty; point it at a folder built by `o2a data build` (or the TFDS "
      "dataset `o2a data build --format tfds` writes)"
    )
  if not pathlib.Path(cfg.source).is_dir():
    raise FileNotFoundError(f"config.data.source {cfg.source!r} is not a folder")
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f"bad process_index/process_count {process_index}/{process_count}")
  if cfg.global_batch % process_count:
    raise ValueError(
      f"config.data.global_batch = {cfg.global_batch} is not divisible by the {process_count} "
      "processes"
    )
  loader = SampleLoader(cfg, cfg.source, cfg.pose_pool, process_index, process_count)
  local = loader.local_batch
  # An effectively endless stream of process-local samples (epochs continue in the plan).
  # Workers build single samples (finer-grained parallelism than whole batches, and at most
  # `per_worker_buffer_size` samples in flight per worker); the main process stacks them.
  ds = grain.MapDataset.range(0, local * (1 << 40)).map(loader)
  it_ds = ds.to_iter_dataset(
    grain.ReadOptions(num_threads=int(cfg.read_threads), prefetch_buffer_size=int(cfg.read_buffer))
  )
  if cfg.worker_count > 0:
    _mark_flags_parsed()
    it_ds = it_ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=int(cfg.worker_count), per_worker_buffer_size=1),
      worker_init_fn=_worker_init,
    )
  it_ds = it_ds.batch(local, drop_remainder=True)
  return TrainIterator(
    iter(it_ds), cfg=cfg, process_index=process_index, process_count=process_count
  )


class _StateSnapshot:
  """The iterator state taken when the save was requested (JSON bytes, as Grain's handler wants
  from a non-DatasetIterator): async Orbax saves run the handler later, when the live iterator
  has already moved on."""

  def __init__(self, state: dict):
    self._bytes = json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self._bytes


def checkpoint_save_args(iterator: TrainIterator):
  """Orbax `args` item that saves the iterator state as of this call (`CheckpointSave`)."""
  return grain.checkpoint.CheckpointSave(_StateSnapshot(iterator.get_state()))


def checkpoint_restore_args(iterator: TrainIterator):
  """Orbax `args` item that restores the iterator state in place."""
  return grain.checkpoint.CheckpointRestore(iterator)
