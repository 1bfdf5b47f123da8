"""Atomic file and folder writes: a temporary sibling renamed onto the target on success only, so
a failure (or a kill) never leaves a half-written output under the real name."""

from __future__ import annotations

import os
import pathlib
import tempfile

from o2a_jax.io.output_paths import publish_mode


class atomic_path:
  """Context manager yielding a temporary sibling path that replaces `path` on success only."""

  def __init__(self, path: str | os.PathLike, is_dir: bool = False):
    self.path = pathlib.Path(path)
    self.is_dir = is_dir

  def __enter__(self) -> pathlib.Path:
    self.path.parent.mkdir(parents=True, exist_ok=True)
    if self.is_dir:
      self.tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{self.path.name}.", dir=self.path.parent))
    else:
      fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
      os.close(fd)
      self.tmp = pathlib.Path(name)
    return self.tmp

  def __exit__(self, exc_type, exc, tb):
    import shutil

    if exc_type is not None:
      if self.tmp.is_dir():
        shutil.rmtree(self.tmp, ignore_errors=True)
      else:
        self.tmp.unlink(missing_ok=True)
      return False
    if self.is_dir and self.path.exists():
      if any(self.path.iterdir()):
        shutil.rmtree(self.tmp, ignore_errors=True)
        raise FileExistsError(f"{self.path} exists and is not empty; choose a new destination")
      self.path.rmdir()
    publish_mode(self.tmp)
    os.replace(self.tmp, self.path)
    return False
