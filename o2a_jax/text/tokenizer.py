"""Prompt cleaning and the UMT5 tokenizer, read from a local Wan2.1 Diffusers `tokenizer/` folder.

`prompt_clean` is the official Wan pipeline's (ftfy, double html unescape, whitespace collapse).
`load_tokenizer` prefers `tokenizer.json` (the `tokenizers` library, which is what transformers'
fast T5 tokenizer runs, so ids are identical) and falls back to `spiece.model` (sentencepiece,
the same Unigram model; added tokens such as `<extra_id_0>` are not special-cased there). Both
append `</s>`, truncate to `max_length` keeping the `</s>`, and pad with `<pad>` to `max_length`.
Nothing is downloaded.
"""

from __future__ import annotations

import html
import os
import pathlib
import re
from collections.abc import Sequence

import numpy as np

from o2a_jax.io.json_files import read_json


def prompt_clean(text: str) -> str:
  """The official cleaning: ftfy fix, html unescape (twice), whitespace collapse and strip."""
  import ftfy  # imported lazily: only prompt embedding needs it

  text = ftfy.fix_text(text)
  text = html.unescape(html.unescape(text)).strip()
  return re.sub(r"\s+", " ", text).strip()


class Tokenizer:
  """`tokenizer(prompts, max_length)` -> (input_ids, attention_mask), both (B, max_length) int32."""

  def __init__(self, path: pathlib.Path, backend, kind: str, pad_id: int, eos_id: int):
    self.path, self._backend, self.kind = path, backend, kind
    self.pad_id, self.eos_id = pad_id, eos_id

  def __repr__(self) -> str:
    return f"Tokenizer({str(self.path)!r}, {self.kind})"

  def encode(self, text: str) -> list[int]:
    """Ids of one text with `</s>` appended, untruncated."""
    if self.kind == "tokenizers":
      return list(self._backend.encode(text, add_special_tokens=True).ids)
    return list(self._backend.encode(text)) + [self.eos_id]

  def __call__(
    self, prompts: str | Sequence[str], max_length: int
  ) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(prompts, str):
      prompts = [prompts]
    if max_length < 1:
      raise ValueError(f"max_length must be positive, got {max_length}")
    ids = np.full((len(prompts), max_length), self.pad_id, np.int32)
    mask = np.zeros((len(prompts), max_length), np.int32)
    for row, text in enumerate(prompts):
      tokens = self.encode(text)
      if len(tokens) > max_length:  # truncation keeps the final </s>, as transformers does
        tokens = tokens[: max_length - 1] + [tokens[-1]]
      ids[row, : len(tokens)] = tokens
      mask[row, : len(tokens)] = 1
    return ids, mask


def _special_token(folder: pathlib.Path, name: str, default: str) -> str:
  for file in ("tokenizer_config.json", "special_tokens_map.json"):
    p = folder / file
    if p.exists():
      value = read_json(p, "a tokenizer config").get(name)
      if isinstance(value, dict):
        value = value.get("content")
      if isinstance(value, str):
        return value
  return default


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
  """The tokenizer of a local folder (`tokenizer.json` and/or `spiece.model`), or one such file."""
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(
      f"tokenizer path {path} does not exist; pass the `tokenizer` folder of a local Wan2.1 "
      "Diffusers release (it holds tokenizer.json and spiece.model)"
    )
  folder = path if path.is_dir() else path.parent
  pad = _special_token(folder, "pad_token", "<pad>")
  eos = _special_token(folder, "eos_token", "</s>")
  json_file = path if path.is_file() and path.suffix == ".json" else folder / "tokenizer.json"
  spm_file = path if path.is_file() and path.suffix == ".model" else folder / "spiece.model"
  if json_file.exists() and not (path.is_file() and path.suffix == ".model"):
    import tokenizers

    try:
      tok = tokenizers.Tokenizer.from_file(str(json_file))
    except Exception as e:  # the library's message names no file
      raise ValueError(f"{json_file} is not a valid tokenizer.json ({e})") from None
    # The released file may carry its own padding/truncation settings; we apply ours.
    tok.no_padding()
    tok.no_truncation()
    ids = {name: tok.token_to_id(name) for name in (pad, eos)}
    if None in ids.values():
      raise ValueError(f"{json_file} lacks the special tokens {pad!r}/{eos!r}")
    if tok.encode("", add_special_tokens=True).ids != [ids[eos]]:
      raise ValueError(
        f"{json_file} does not append {eos!r} to every text; not a T5/UMT5 tokenizer"
      )
    return Tokenizer(json_file, tok, "tokenizers", ids[pad], ids[eos])
  if spm_file.exists():
    import sentencepiece

    sp = sentencepiece.SentencePieceProcessor(model_file=str(spm_file))
    pad_id, eos_id = sp.piece_to_id(pad), sp.piece_to_id(eos)
    if sp.id_to_piece(pad_id) != pad or sp.id_to_piece(eos_id) != eos:
      raise ValueError(f"{spm_file} lacks the special tokens {pad!r}/{eos!r}")
    return Tokenizer(spm_file, sp, "sentencepiece", pad_id, eos_id)
  raise FileNotFoundError(
    f"no tokenizer.json or spiece.model in {folder}; pass the `tokenizer` folder of a local "
    "Wan2.1 Diffusers release"
  )
