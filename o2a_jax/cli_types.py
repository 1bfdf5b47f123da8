"""argparse value types shared by the `o2a` subcommands, so that a flag means and is spelled the
same everywhere (`--dtype bf16` and `--dtype bfloat16` alike; counts that must be positive)."""

from __future__ import annotations

import argparse

# Accepted spellings -> the jnp dtype name.
DTYPE_NAMES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16"}


def dtype_name(text: str) -> str:
  """`bf16`/`bfloat16`/`fp32`/`float32` -> 'bfloat16' or 'float32'."""
  try:
    return DTYPE_NAMES[text.strip().lower()]
  except KeyError:
    raise argparse.ArgumentTypeError(
      f"unknown dtype {text!r}; use one of {', '.join(DTYPE_NAMES)}"
    ) from None


def int_at_least(low: int, multiple: int = 1):
  """An argparse type: an integer >= low (and a multiple of `multiple`)."""

  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < low or value % multiple:
      extra = f" and a multiple of {multiple}" if multiple > 1 else ""
      raise argparse.ArgumentTypeError(f"must be >= {low}{extra}, got {value}")
    return value

  return parse


def positive_float(text: str) -> float:
  try:
    value = float(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
  if not value > 0:
    raise argparse.ArgumentTypeError(f"must be > 0, got {value}")
  return value
