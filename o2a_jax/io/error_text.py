"""One line of an exception for a message that names its own subject: third-party errors
(Orbax, ArrayRecord, XLA) often span dozens of lines and name no file."""

from __future__ import annotations


def first_line(e: BaseException, limit: int = 300) -> str:
  """`Type: first non-empty line of the message` (cut at `limit` characters)."""
  text = next((line for line in str(e).splitlines() if line.strip()), "")
  return f"{type(e).__name__}: {text[:limit]}"
