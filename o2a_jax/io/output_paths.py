"""The one rule for command outputs, checked before any work: an existing output is replaced only
with `--overwrite`, and the folder it goes to must be writable.

Every `o2a` subcommand that writes a file or a folder calls `check_output` on it first, so a typo
or a read-only destination fails in a second with a message naming the path and the fix, instead
of after a long generation or with a bare `[Errno 17]`.
"""

from __future__ import annotations

import os
import pathlib


def _nearest_existing(path: pathlib.Path) -> pathlib.Path:
  for p in (path, *path.parents):
    if p.exists():
      return p
  return pathlib.Path(".")


def check_output(path, *, overwrite: bool, folder: bool = False, flag: str = "--out") -> None:
  """Raises FileExistsError / ValueError / PermissionError unless `path` can be (re)written.

  folder: the output is a folder of files (an existing *empty* folder is fine without
  `--overwrite`); otherwise it is one file.
  """
  path = pathlib.Path(path)
  if path.exists():
    if folder and not path.is_dir():
      raise ValueError(f"{flag} {str(path)!r} is a file; the output is a folder")
    if not folder and path.is_dir():
      raise ValueError(f"{flag} {str(path)!r} is a folder; the output is a file")
    if not overwrite and (not folder or any(path.iterdir())):
      raise FileExistsError(
        f"{flag} {str(path)!r} already exists; pass --overwrite to replace it, or choose another "
        "path"
      )
  check_writable(path, flag=flag, folder=folder)


def check_writable(path, *, flag: str, folder: bool = False) -> None:
  """Raises unless `path` (a file, or with `folder` a folder, existing or not) can be written:
  its nearest existing folder must be a writable folder."""
  path = pathlib.Path(path)
  target = path if (folder and path.is_dir()) else _nearest_existing(path.parent)
  if not target.is_dir():
    raise ValueError(f"{flag} {str(path)!r}: {str(target)!r} is not a folder")
  if not os.access(target, os.W_OK | os.X_OK):
    raise PermissionError(
      f"{flag} {str(path)!r}: the folder {str(target)!r} is not writable; choose another path"
    )


def _umask() -> int:
  """The process umask, read without changing it where /proc allows (os.umask is racy)."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith("Umask:"):
        return int(line.split()[1], 8)
  except OSError:
    pass
  mask = os.umask(0o022)
  os.umask(mask)
  return mask


def publish_mode(path) -> None:
  """Gives a temporary file or folder (mkstemp/mkdtemp make them 0600/0700) the mode a plain
  `open`/`mkdir` would have, before it is renamed into place: outputs are readable by others
  exactly as the user's umask says, not private by accident."""
  path = pathlib.Path(path)
  os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~_umask())
