"""Regenerates `tests/fixtures/text_tiny/`: a tiny UMT5 encoder, a tokenizer, reference outputs.

Test-only tool (uses torch, transformers, diffusers and the sentencepiece trainer). It:
  1. trains a small sentencepiece unigram model (T5 conventions: pad 0, eos 1, unk 2, no bos) on a
     synthetic multilingual corpus, and saves it as a transformers `T5Tokenizer` folder
     (`tokenizer/tokenizer.json`, `tokenizer_config.json`, plus the `spiece.model` itself);
  2. builds `transformers.UMT5EncoderModel` with a small random configuration (every parameter
     random, norm weights included) and saves it with `save_pretrained` (`text_encoder/`);
  3. records reference outputs in `io.npz` and the prompts in `cases.json`:
     - `hidden.padded.*`: the encoder on a right-padded batch with its mask (padding not zeroed);
     - `hidden.unpadded.*`: the encoder on a batch without padding and without a mask;
     - `hidden.padded.bf16`: the same padded batch with the model cast to bfloat16;
     - `buckets.xxl.512`: transformers' relative-position buckets for the UMT5-XXL settings;
     - `pipeline.<n>.*`: the official procedure (diffusers `WanPipeline._get_t5_prompt_embeds`:
       prompt_clean, tokenize with padding and truncation, encode with the mask, zero the padded
       rows) at max length n.

Usage: python scripts/make_text_fixture.py [--out tests/fixtures/text_tiny]
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import pathlib
import random
import shutil
import types

import diffusers
import numpy as np
import sentencepiece as spm
import tokenizers
import torch
import transformers
import transformers.utils
from transformers import AutoTokenizer, T5Tokenizer, UMT5Config, UMT5EncoderModel
from transformers.models.umt5.modeling_umt5 import UMT5Attention

# diffusers 0.33 imports a constant that transformers 5 removed; it is only a file name.
transformers.utils.FLAX_WEIGHTS_NAME = getattr(
  transformers.utils, "FLAX_WEIGHTS_NAME", "flax_model.msgpack"
)
from diffusers.pipelines.wan.pipeline_wan import WanPipeline, prompt_clean  # noqa: E402

CONFIG = dict(
  vocab_size=320,  # more rows than the tokenizer's 266 ids, as UMT5-XXL (256384 > 256300)
  d_model=64,
  d_kv=12,  # N*K = 48 != D, so q/k/v/o shapes are not square
  d_ff=96,
  num_layers=3,
  num_heads=4,
  relative_attention_num_buckets=16,  # != default 32: config.json must be read
  relative_attention_max_distance=20,  # != default 128; sequences of 32 reach the clamp
  layer_norm_epsilon=1e-6,
  feed_forward_proj="gated-gelu",
  dropout_rate=0.0,
  pad_token_id=0,
  eos_token_id=1,
)

PROMPTS = [
  "",
  "A woman in a red dress is dancing in the park",
  "  the   dancing  man &amp;amp; café\n\tnaïve über façade  ",
  "東京 の 女孩 跳舞 night light",
  "mojibake cafÃ© &lt;b&gt; zoom",
  " ".join(["black background, Aerial view, overexposed, low quality, deformation"] * 4),
]


def corpus(seed: int = 0) -> list[str]:
  rng = random.Random(seed)
  base = (
    "the a dancing woman man dress red blue walks slowly in on park city night light camera zoom "
    "overexposed low quality deformation bad hands teeth eyes limbs distortion background aerial "
    "view composition poor black white character animation pose smiling jumping running garden "
    "café naïve über façade 日本 東京 舞蹈 女孩 跳舞"
  ).split()
  syllables = ["ka", "lo", "mi", "ren", "tor", "sa", "bel", "qu", "ix", "on", "ar", "es", "ung"]
  words = base + [
    "".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(400)
  ]
  return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 15))) for _ in range(4000)]


def make_tokenizer(out: pathlib.Path) -> None:
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
    sentence_iterator=iter(corpus()),
    model_writer=model,
    vocab_size=256,
    model_type="unigram",
    pad_id=0,
    eos_id=1,
    unk_id=2,
    bos_id=-1,
    character_coverage=1.0,
    num_threads=1,
    minloglevel=2,
  )
  staging = out.parent / "_spm"
  staging.mkdir(parents=True, exist_ok=True)
  (staging / "spiece.model").write_bytes(model.getvalue())
  # transformers converts the sentencepiece model into a `tokenizers` Unigram tokenizer.json,
  # the same way the released umt5 tokenizer.json was made.
  tok = T5Tokenizer.from_pretrained(staging, extra_ids=10)
  tok.save_pretrained(out)
  shutil.copy(staging / "spiece.model", out / "spiece.model")
  shutil.rmtree(staging)


def main() -> None:
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  parser.add_argument("--out", default="tests/fixtures/text_tiny")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  out = pathlib.Path(args.out)
  if out.exists():
    shutil.rmtree(out)
  out.mkdir(parents=True)

  make_tokenizer(out / "tokenizer")
  tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")

  torch.manual_seed(args.seed)
  config = UMT5Config(**CONFIG)
  config._attn_implementation = "eager"
  model = UMT5EncoderModel(config).eval()
  with torch.no_grad():
    # Every parameter random, norms included (their default init is all ones).
    for name, p in model.named_parameters():
      if "layer_norm" in name:
        p.copy_(torch.empty_like(p).uniform_(0.5, 1.5))
  model.save_pretrained(out / "text_encoder")

  arrays: dict[str, np.ndarray] = {}
  gen = torch.Generator().manual_seed(args.seed + 1)
  lengths = [32, 19, 7]
  ids = torch.randint(3, CONFIG["vocab_size"], (3, 32), generator=gen)  # ids past the tokenizer too
  mask = (torch.arange(32)[None] < torch.tensor(lengths)[:, None]).long()
  ids = torch.where(mask.bool(), ids, torch.zeros_like(ids))
  with torch.no_grad():
    arrays["hidden.padded.input_ids"] = ids.numpy().astype(np.int32)
    arrays["hidden.padded.attention_mask"] = mask.numpy().astype(np.int32)
    arrays["hidden.padded.out"] = model(ids, mask).last_hidden_state.numpy()
    unpadded = torch.randint(0, CONFIG["vocab_size"], (2, 40), generator=gen)
    arrays["hidden.unpadded.input_ids"] = unpadded.numpy().astype(np.int32)
    arrays["hidden.unpadded.out"] = model(unpadded).last_hidden_state.numpy()
    bf16 = UMT5EncoderModel(config).eval()
    bf16.load_state_dict(model.state_dict())
    bf16 = bf16.to(torch.bfloat16)
    arrays["hidden.padded.bf16"] = bf16(ids, mask).last_hidden_state.float().numpy()

  # The official procedure, run through the diffusers function itself.
  pipe = types.SimpleNamespace(
    tokenizer=tokenizer, text_encoder=model, _execution_device=torch.device("cpu")
  )
  cases = {}
  for n in (32, 12):
    with torch.no_grad():
      embeds = WanPipeline._get_t5_prompt_embeds(
        pipe, PROMPTS, max_sequence_length=n, device=torch.device("cpu"), dtype=torch.float32
      )
    cleaned = [prompt_clean(p) for p in PROMPTS]
    tok = tokenizer(
      cleaned,
      padding="max_length",
      max_length=n,
      truncation=True,
      add_special_tokens=True,
      return_attention_mask=True,
      return_tensors="np",
    )
    arrays[f"pipeline.{n}.input_ids"] = tok["input_ids"].astype(np.int32)
    arrays[f"pipeline.{n}.attention_mask"] = tok["attention_mask"].astype(np.int32)
    arrays[f"pipeline.{n}.embeds"] = embeds.numpy()
    cases[str(n)] = {"cleaned": cleaned}

  # Relative-position buckets of the real UMT5-XXL config (32 buckets, max distance 128) at 512.
  rel = torch.arange(512)[None, :] - torch.arange(512)[:, None]
  xxl = types.SimpleNamespace(
    relative_attention_num_buckets=32, relative_attention_max_distance=128, is_decoder=False
  )
  arrays["buckets.xxl.512"] = (
    UMT5Attention._relative_position_bucket(xxl, rel).numpy().astype(np.int8)
  )

  np.savez_compressed(out / "io.npz", **arrays)
  meta = {
    "config": CONFIG,
    "prompts": PROMPTS,
    "pipeline": cases,
    "generated": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    "versions": {
      "torch": torch.__version__,
      "transformers": transformers.__version__,
      "diffusers": diffusers.__version__,
      "sentencepiece": spm.__version__,
      "tokenizers": tokenizers.__version__,
    },
  }
  (out / "cases.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
  print(f"wrote {out}: " + ", ".join(sorted(p.name for p in out.rglob("*") if p.is_file())))


if __name__ == "__main__":
  main()
