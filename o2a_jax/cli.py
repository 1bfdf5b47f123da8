"""The `o2a` command line: one console script with subcommands, each with `--help`.

Each subcommand lives in the module that owns it and registers itself through
`add_parser(subparsers)`; the parser sets `func(args) -> int` as the handler.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Modules that contribute subcommands, in the order `o2a --help` lists them.
SUBCOMMAND_MODULES = (
  "o2a_jax.puppet.demo",
  "o2a_jax.convert.cli",
  "o2a_jax.inference.text_cli",
  "data_pipeline.cli",
  "o2a_jax.train.cli",
  "o2a_jax.inference.cli",
  "o2a_jax.evaluate.cli",
)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog="o2a",
    description="One-to-All Animation in JAX: pose-driven character animation on Wan2.1.",
  )
  sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
  for name in SUBCOMMAND_MODULES:
    importlib.import_module(name).add_parser(sub)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    return int(args.func(args) or 0)
  except (ValueError, FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError,
          NotADirectoryError) as e:  # fmt: skip
    # Bad input: one clear line, no traceback. Programming errors still raise.
    print(f"o2a {args.command}: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
