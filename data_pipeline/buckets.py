"""Resolution / aspect-ratio / frame-count buckets (official bucketing and image/video mixing) and
the frame stride (official frame sampling).

`aspect_ratios.json` holds the official `ASPECT_RATIO_512` and `ASPECT_RATIO_768` tables
(`video-generation/opensora/utils/aspect.py:375-460`, copied from the project's golden fixtures):
H/W ratio -> (H, W) target size. A sample's target size is the entry whose ratio is closest to its
own H/W.

Bucket configs (`BUCKET_CONFIGS[name][res] = (p_res, p_keep_frames)`): an eligible sample goes to
resolution `res` with probability `p_res` (tried from large to small); a video in that resolution
stays a multi-frame clip with probability `p_keep_frames`, else it becomes a single-frame sample
(the official `0.95` T-probability of the 512 bucket). A sample is eligible for `res` when its
H·W >= 0.7·res².

`scale` shrinks every table entry (rounded to a multiple of 16, at least 16) and the eligibility
threshold alike; it exists for tests and smoke runs on CPU (1.0 = the official sizes).
"""

from __future__ import annotations

import functools
import json
import pathlib

import numpy as np

_TABLE_FILE = pathlib.Path(__file__).with_name("aspect_ratios.json")

# name -> {res: (p_res, p_keep_frames)}, ordered large to small (BK:93, 118-126).
BUCKET_CONFIGS = {
  "mochi": {"512": (1.0, 1.0)},
  "768": {"768": (0.5, 1.0), "512": (1.0, 0.95)},
  "768_v2": {"768": (0.8, 1.0), "512": (1.0, 0.95)},
}
ELIGIBLE_FRACTION = 0.7


@functools.cache
def _tables() -> dict:
  raw = json.loads(_TABLE_FILE.read_text())
  return {res: raw[res] for res in ("512", "768")}


@functools.cache
def aspect_table(res: str, scale: float = 1.0) -> tuple[tuple[float, int, int], ...]:
  """((H/W ratio, H, W), ...) of one resolution class, sizes scaled and kept multiples of 16."""
  if res not in ("512", "768"):
    raise ValueError(f"unknown resolution bucket {res!r}; the official tables are '512' and '768'")
  out = []
  for key, (h, w) in _tables()[res].items():
    if scale != 1.0:
      h = max(16, int(round(h * scale / 16)) * 16)
      w = max(16, int(round(w * scale / 16)) * 16)
    out.append((float(key), int(h), int(w)))
  return tuple(out)


def target_size(height: int, width: int, res: str, scale: float = 1.0) -> tuple[int, int]:
  """The (H, W) of the table entry whose ratio is closest to height/width."""
  table = aspect_table(res, scale)
  ratios = np.array([r for r, _, _ in table])
  i = int(np.argmin(np.abs(ratios - height / width)))
  return table[i][1], table[i][2]


def eligible(height: int, width: int, res: str, scale: float = 1.0) -> bool:
  side = int(res) * scale
  return height * width >= ELIGIBLE_FRACTION * side * side


def frame_stride(fps: float, train_fps: int, *, eligibility: bool, reproduce_official: bool) -> int:
  """Pixel-frame stride of a training clip.

  The official dataset uses `max(int(fps/16), 1)` but bucket eligibility `round(fps/16)` (spec
  official bug: int vs round frame stride); with `reproduce_official` both are kept, else both use
  the dataset's floor.
  """
  if reproduce_official and eligibility:
    return int(round(fps / train_fps))
  return max(int(fps / train_fps), 1)


def bucket_config(name: str) -> dict:
  if name not in BUCKET_CONFIGS:
    raise ValueError(f"unknown bucket config {name!r}; choose one of {sorted(BUCKET_CONFIGS)}")
  return BUCKET_CONFIGS[name]
