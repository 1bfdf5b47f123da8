"""JSON files: reading the ones users hand us (VAE and tokenizer configs, metadata) with errors
that name the file and say what it should be, instead of a bare `JSONDecodeError` at line 1; and
writing ours atomically."""

from __future__ import annotations

import json
import os
import pathlib


def read_json(path: str | os.PathLike, what: str) -> dict:
  """The JSON object in `path`; ValueError naming the file and `what` it should hold."""
  path = pathlib.Path(path)
  try:
    value = json.loads(path.read_text(encoding="utf-8"))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is not valid JSON ({e}); expected {what}") from None
  if not isinstance(value, dict):
    raise ValueError(f"{path} holds a JSON {type(value).__name__}, expected {what} (an object)")
  return value


def write_json(path: str | os.PathLike, value) -> pathlib.Path:
  """Writes `value` as indented JSON to `path` atomically (never half-written)."""
  from o2a_jax.io.atomic import atomic_path

  path = pathlib.Path(path)
  with atomic_path(path) as tmp:
    tmp.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
  return path
