"""Reading and writing videos, GIFs, images and PNG frame folders (uint8 RGB, (F,H,W,3)).

MP4 (H.264) goes through PyAV, whose wheels ship FFmpeg and libx264, so nothing outside
Python is needed. GIFs and PNGs go through Pillow. Every write is atomic: the file (or the
frame folder) is written under a temporary name next to the destination and renamed into
place, so a failure leaves nothing behind. Reading errors name the file and what was wrong.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import numpy as np
from PIL import Image

from o2a_jax.io.output_paths import publish_mode

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WRITE_SUFFIXES = (".mp4", ".gif", ".png", "")  # "" = a folder of PNG frames


class MediaError(ValueError):
  """An image or video that cannot be read or written; the message names the file."""


def _check_frames(frames) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
    raise MediaError(f"frames must be uint8 (F,H,W,3) with F >= 1, got shape {frames.shape}")
  if frames.dtype != np.uint8:
    raise MediaError(f"frames must be uint8, got {frames.dtype}; use to_uint8() on [-1,1] floats")
  return frames


def to_uint8(pixels) -> np.ndarray:
  """[-1, 1] floats -> uint8, rounding as the official `(x + 1) * 127.5` followed by a clip."""
  x = (np.asarray(pixels, np.float32) + 1.0) * 127.5
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def read_image(path: str | os.PathLike) -> np.ndarray:
  """An image file -> uint8 (H,W,3) RGB."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise MediaError(f"image {str(path)!r} does not exist or is not a file")
  try:
    with Image.open(path) as im:
      return np.asarray(im.convert("RGB"))
  except Exception as e:  # PIL raises many types for corrupt files
    raise MediaError(f"cannot read image {str(path)!r}: {e}") from e


def read_video(
  path: str | os.PathLike, *, max_frames: int | None = None
) -> tuple[np.ndarray, float]:
  """A video file, a GIF, a single image or a folder of images -> (uint8 (F,H,W,3), fps).

  Folders are read in sorted file-name order at 30 fps (the official convention for frame
  folders); a single image is a 1-frame video.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise MediaError(f"folder {str(path)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    files = files[:max_frames] if max_frames else files
    frames = [read_image(f) for f in files]
    if len({f.shape for f in frames}) != 1:
      raise MediaError(f"images in {str(path)!r} differ in size")
    return np.stack(frames), 30.0
  if not path.is_file():
    raise MediaError(f"video {str(path)!r} does not exist")
  if path.suffix.lower() in IMAGE_SUFFIXES:
    return read_image(path)[None], 30.0
  if path.suffix.lower() == ".gif":
    return _read_gif(path, max_frames)
  import av

  frames = []
  try:
    with av.open(str(path)) as container:
      if not container.streams.video:
        raise MediaError(f"{str(path)!r} has no video stream")
      stream = container.streams.video[0]
      fps = float(stream.average_rate or stream.guessed_rate or 30)
      for frame in container.decode(stream):
        frames.append(frame.to_ndarray(format="rgb24"))
        if max_frames and len(frames) >= max_frames:
          break
  except MediaError:
    raise
  except Exception as e:
    raise MediaError(f"cannot decode video {str(path)!r}: {e}") from e
  if not frames:
    raise MediaError(f"video {str(path)!r} has no decodable frames")
  return np.stack(frames), fps


def _read_gif(path: pathlib.Path, max_frames: int | None) -> tuple[np.ndarray, float]:
  try:
    with Image.open(path) as im:
      duration = im.info.get("duration", 100) or 100
      frames = []
      for i in range(getattr(im, "n_frames", 1)):
        im.seek(i)
        frames.append(np.asarray(im.convert("RGB")))
        if max_frames and len(frames) >= max_frames:
          break
  except Exception as e:
    raise MediaError(f"cannot read GIF {str(path)!r}: {e}") from e
  return np.stack(frames), 1000.0 / duration


def _temp_sibling(path: pathlib.Path, *, folder: bool = False) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  if folder:
    return pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
  os.close(fd)
  return pathlib.Path(tmp)


def write_video(
  path: str | os.PathLike, frames, fps: float = 16.0, *, quality: int = 18, chroma: str = "420"
) -> pathlib.Path:
  """Write uint8 (F,H,W,3) frames as .mp4 (H.264), .gif, .png (F == 1) or a PNG folder.

  `quality` is the x264 CRF (lower is better; 18 is visually lossless). H.264 in yuv420p
  needs even sizes, so odd heights/widths are padded by one edge pixel. GIF players (and
  Pillow) merge identical consecutive frames. `chroma="444"` writes full-resolution chroma
  (yuv444p: small coloured details survive, any size allowed; less widely played). Atomic.
  """
  path = pathlib.Path(path)
  frames = _check_frames(frames)
  suffix = path.suffix.lower()
  if suffix not in WRITE_SUFFIXES:
    raise MediaError(f"cannot write {str(path)!r}: use one of .mp4, .gif, .png or a folder name")
  if suffix == ".png" and frames.shape[0] != 1:
    raise MediaError(f"{str(path)!r}: a .png holds one frame, got {frames.shape[0]}; use a folder")
  if fps <= 0:
    raise MediaError(f"fps must be positive, got {fps}")
  if chroma not in ("420", "444"):
    raise MediaError(f"chroma must be '420' or '444', got {chroma!r}")
  if suffix == "":
    tmp = _temp_sibling(path, folder=True)
    try:
      for i, f in enumerate(frames):
        Image.fromarray(f).save(tmp / f"{i:05d}.png")
      if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
      publish_mode(tmp)
      os.replace(tmp, path)
    except BaseException:
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    return path
  tmp = _temp_sibling(path)
  try:
    if suffix == ".png":
      Image.fromarray(frames[0]).save(tmp, format="PNG")
    elif suffix == ".gif":
      ims = [Image.fromarray(f) for f in frames]
      ims[0].save(
        tmp,
        format="GIF",
        save_all=True,
        append_images=ims[1:],
        duration=max(int(round(1000 / fps)), 20),
        loop=0,
      )
    else:
      _write_mp4(tmp, frames, fps, quality, chroma)
    publish_mode(tmp)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise
  return path


def _write_mp4(
  path: pathlib.Path, frames: np.ndarray, fps: float, quality: int, chroma: str
) -> None:
  import fractions

  import av

  pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
  if chroma == "420" and (pad_h or pad_w):
    frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
  rate = fractions.Fraction(fps).limit_denominator(1001)
  with av.open(str(path), mode="w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height = frames.shape[2], frames.shape[1]
    stream.pix_fmt = "yuv420p" if chroma == "420" else "yuv444p"
    stream.options = {"crf": str(quality)}
    for f in frames:
      for packet in stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
        container.mux(packet)
    for packet in stream.encode():
      container.mux(packet)


def side_by_side(*videos) -> np.ndarray:
  """Concatenate uint8 (F,H,W,3) videos of equal F and H along the width."""
  videos = [_check_frames(v) for v in videos]
  if len({(v.shape[0], v.shape[1]) for v in videos}) != 1:
    raise MediaError(
      f"side_by_side needs equal frame counts and heights, got {[v.shape for v in videos]}"
    )
  return np.concatenate(videos, axis=2)
