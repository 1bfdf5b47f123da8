"""Chunk plans for long videos and their stitching (official TokenReplace at sampling, long-video
chunking, official bug: split plan of at least two chunks).

A video of F frames is generated as chunks of at most 81 frames (every chunk 4k + 1 frames, the
VAE's causal grid). A chunk that starts after frame 0 is TokenReplace-conditioned on the 5 frames
`[start, start + 5)` that earlier chunks already produced (re-encoded into 2 clean latents).

Two plans:

- `plan_chunks(n)` (default) handles any length from 1 frame up. Up to 81 frames it is one chunk,
  padded to the next 4k + 1 frames by repeating the last pose (the padding frames are generated
  and dropped). Longer videos take 81-frame chunks that advance by 76 frames (5 context frames),
  and a final chunk just long enough (>= 9 frames, ending exactly at frame F). Each chunk keeps
  the frames before it and writes only its new frames `[start + 5, end)`: its 5 context frames
  are VAE round trips of frames that already exist, so the originals are kept, and the seam is
  exactly where the new chunk continues from its context.
- `plan_chunks(n, reproduce_official=True)`: the official `build_split_plan` (defined for
  F >= 81 only; it crashes below): 81-frame chunks advancing by 76 while another full chunk does
  not reach the end, then a final chunk of the first length in (65, 69, 73, 77, 81) that starts
  before the last chunk's context region ends. It always makes at least two chunks (F = 81 gives
  (0, 81) and (16, 81)), and every chunk overwrites all its frames, context frames included.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from o2a_jax.sampling.chunk import CONTEXT_FRAMES, CONTEXT_LATENTS
from o2a_jax.vae.strides import pixel_frames

MAIN_CHUNK = 81
OVERLAP_FRAMES = CONTEXT_FRAMES  # TokenReplace context: 5 pixel frames = 2 latent frames
MIN_CONTEXT_CHUNK = pixel_frames(CONTEXT_LATENTS + 1)  # 9: more than the context's latent frames
FINAL_CHUNK_CANDIDATES = (65, 69, 73, 77, 81)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """One generated chunk.

  Attributes:
    start, end: pose frames [start, end) the chunk is generated from; end - start = 4k + 1.
      `end` may exceed the video length for the last chunk (its last pose repeats).
    write_start: the first output frame this chunk writes; it writes [write_start, min(end, F)).
  """

  start: int
  end: int
  write_start: int

  @property
  def frames(self) -> int:
    return self.end - self.start

  @property
  def context(self) -> bool:
    """Whether the chunk is conditioned on the 5 earlier frames [start, start + 5)."""
    return self.start > 0


def _round_up_4k1(n: int) -> int:
  return 4 * -(-(n - 1) // 4) + 1


def _official(total: int) -> list[Chunk]:
  if total < MAIN_CHUNK:
    raise ValueError(
      f"the official chunk plan needs at least {MAIN_CHUNK} frames (it crashes below), got "
      f"{total}; use reproduce_official=False for shorter videos"
    )
  chunks, start = [], 0
  while True:
    cur_end, nxt = start + MAIN_CHUNK, start + MAIN_CHUNK - OVERLAP_FRAMES
    if nxt + MAIN_CHUNK >= total:
      chunks.append(Chunk(start, cur_end, start))
      final_start = next(
        (total - n for n in FINAL_CHUNK_CANDIDATES if total - n < cur_end - OVERLAP_FRAMES), nxt
      )
      chunks.append(Chunk(final_start, total, final_start))
      return chunks
    chunks.append(Chunk(start, cur_end, start))
    start = nxt


def plan_chunks(total: int, *, reproduce_official: bool = False) -> list[Chunk]:
  """The chunks that generate a video of `total` frames (see the module docstring)."""
  if not isinstance(total, int | np.integer) or total < 1:
    raise ValueError(f"a video needs at least 1 frame, got {total!r}")
  total = int(total)
  if reproduce_official:
    return _official(total)
  if total <= MAIN_CHUNK:
    return [Chunk(0, _round_up_4k1(total), 0)]
  chunks = [Chunk(0, MAIN_CHUNK, 0)]
  while chunks[-1].end < total:
    new = total - chunks[-1].end  # frames still to generate
    length = max(MIN_CONTEXT_CHUNK, _round_up_4k1(new + OVERLAP_FRAMES))
    if length <= MAIN_CHUNK:
      start = total - length
    else:
      length, start = MAIN_CHUNK, chunks[-1].end - OVERLAP_FRAMES
    chunks.append(Chunk(start, start + length, start + OVERLAP_FRAMES))
  return chunks


def fixed_chunks(total: int, frames: int) -> list[Chunk]:
  """Chunks of `frames` frames each advancing by frames - 5 (TokenReplace context); the last
  ends at or after `total` (short plans for small models, e.g. the puppet toy)."""
  if frames < MIN_CONTEXT_CHUNK or (frames - 1) % 4:
    raise ValueError(f"chunk must be 4k+1 frames and at least {MIN_CONTEXT_CHUNK}, got {frames}")
  chunks = [Chunk(0, frames, 0)]
  while chunks[-1].end < total:
    s = chunks[-1].end - OVERLAP_FRAMES
    chunks.append(Chunk(s, s + frames, s + OVERLAP_FRAMES))
  return chunks


def check_plan(chunks: list[Chunk], total: int) -> None:
  """Asserts the invariants every plan must satisfy (used by tests and before sampling)."""
  written = np.zeros(total, bool)
  for i, c in enumerate(chunks):
    if c.frames < 1 or (c.frames - 1) % 4:
      raise ValueError(f"chunk {i} {c} has {c.frames} frames, not 4k + 1")
    if c.context:
      if c.frames < MIN_CONTEXT_CHUNK:
        raise ValueError(f"chunk {i} {c} is too short for TokenReplace")
      if not written[c.start : c.start + OVERLAP_FRAMES].all():
        raise ValueError(f"chunk {i} {c} needs context frames that are not generated yet")
    if i < len(chunks) - 1 and c.end > total:  # only the last may pad past the end
      raise ValueError(f"chunk {i} {c} runs past the video ({total} frames)")
    written[c.write_start : min(c.end, total)] = True
  if not written.all():
    raise ValueError(f"the plan leaves frames {np.flatnonzero(~written).tolist()} ungenerated")


def place(video: np.ndarray, chunk: Chunk, frames) -> None:
  """Writes a chunk's frames [write_start, min(end, F)) into `video` (F, H, W, 3) in place."""
  frames = np.asarray(frames)
  if frames.shape[0] != chunk.frames:
    raise ValueError(f"chunk {chunk} produced {frames.shape[0]} frames, expected {chunk.frames}")
  stop = min(chunk.end, video.shape[0])
  video[chunk.write_start : stop] = frames[chunk.write_start - chunk.start : stop - chunk.start]


def stitch(chunks: list[Chunk], outputs, total: int) -> np.ndarray:
  """Places each chunk's frames, in order, into one (total, H, W, 3) video."""
  video = None
  for c, frames in zip(chunks, outputs, strict=True):
    frames = np.asarray(frames)
    if video is None:
      video = np.zeros((total,) + frames.shape[1:], frames.dtype)
    place(video, c, frames)
  return video
