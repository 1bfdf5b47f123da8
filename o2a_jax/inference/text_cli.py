"""`o2a text embed`: precompute prompt embeddings into the on-disk cache.

By default it encodes the empty prompt and the default negative prompt (official text conditioning)
at the inference length 512, so that sampling never needs the 11 GB text encoder for them. Wire it
into the `o2a` parser with `add_parser(subparsers)`; the registered command sets `func`, called as
`func(args)`. Also runnable alone: `python -m o2a_jax.inference.text_cli text embed --help`.
"""

from __future__ import annotations

import argparse
import sys

from o2a_jax.text.embed import DEFAULT_NEGATIVE_PROMPT, INFERENCE_LENGTH, TRAINING_LENGTH


def add_parser(subparsers) -> argparse.ArgumentParser:
  """Registers `text embed` on an argparse subparsers object; returns the `embed` parser."""
  text = subparsers.add_parser("text", help="text encoder tools (UMT5-XXL in JAX)")
  text_sub = text.add_subparsers(dest="text_command", metavar="{embed}", required=True)
  p = text_sub.add_parser(
    "embed",
    help="precompute prompt embeddings into a cache",
    description=(
      "Encode prompts with the official procedure (clean, tokenize, UMT5 encode, zero the "
      "padding) and store them in an embedding cache keyed by prompt, length and checkpoint. "
      "Without --prompt: the empty prompt and the default negative prompt."
    ),
  )
  p.add_argument(
    "--text-encoder", required=True, help="the release's text_encoder/ folder (safetensors)"
  )
  p.add_argument("--tokenizer", required=True, help="the release's tokenizer/ folder")
  p.add_argument("--cache", required=True, help="embedding cache folder (created if absent)")
  p.add_argument(
    "--prompt",
    action="append",
    help="a prompt to encode (repeatable); default: '' and the default negative prompt",
  )
  p.add_argument(
    "--max-length",
    type=int,
    action="append",
    help=f"token length (repeatable); default {INFERENCE_LENGTH} (inference), "
    f"{TRAINING_LENGTH} for training caches",
  )
  p.add_argument(
    "--dtype",
    choices=("bfloat16", "float32"),
    default="bfloat16",
    help="encoder dtype (default: bfloat16, as the official inference)",
  )
  p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
  p.set_defaults(func=run_embed)
  return p


def run_embed(args: argparse.Namespace) -> int:
  """Runs `text embed`; prints one `<length>\\t<path>\\t<prompt>` line per cached embedding."""
  import jax.numpy as jnp
  from tqdm import tqdm

  from o2a_jax.convert.text import load_text_encoder
  from o2a_jax.text.embed import EmbeddingCache, embed_prompts
  from o2a_jax.text.tokenizer import load_tokenizer

  prompts = args.prompt if args.prompt is not None else ["", DEFAULT_NEGATIVE_PROMPT]
  lengths = args.max_length or [INFERENCE_LENGTH]
  if any(n < 1 for n in lengths):
    raise SystemExit(f"--max-length must be positive, got {lengths}")
  tokenizer = load_tokenizer(args.tokenizer)
  with tqdm(desc="loading text encoder", unit="tensor", disable=args.no_progress) as bar:

    def progress(done, total):
      bar.total = total
      bar.update(done - bar.n)

    encoder = load_text_encoder(args.text_encoder, dtype=jnp.dtype(args.dtype), progress=progress)
  cache = EmbeddingCache(args.cache)
  jobs = [(n, p) for n in lengths for p in prompts]
  for n, prompt in tqdm(jobs, desc="embedding prompts", unit="prompt", disable=args.no_progress):
    embed_prompts(encoder, tokenizer, [prompt], max_length=n, cache=cache)
    print(f"{n}\t{cache.path(encoder, prompt, n)}\t{prompt!r}")
  return 0


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="o2a", description="o2a text tools")
  add_parser(parser.add_subparsers(dest="command", required=True))
  args = parser.parse_args(argv)
  return args.func(args)


if __name__ == "__main__":
  sys.exit(main())
