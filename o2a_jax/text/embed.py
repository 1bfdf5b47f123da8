"""Prompt embeddings by the official procedure, and an on-disk cache of them.

`embed_prompts` follows the Wan pipeline's `_get_t5_prompt_embeds` (official text conditioning):
clean each prompt, tokenize with `</s>`, truncation and padding to `max_length`, run the encoder
with the mask, keep the first `mask.sum()` rows and zero the rest. Inference uses 512 tokens,
training caches 226.

`EmbeddingCache` stores one safetensors file per (prompt, max_length, checkpoint, dtype), written
atomically, so the empty and negative prompts are encoded once and reused without the encoder.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.io import safetensors as sio
from o2a_jax.text.tokenizer import Tokenizer, prompt_clean

# Official text conditioning: the demo's negative prompt (the reproduce scripts omit "black
# background, ").
DEFAULT_NEGATIVE_PROMPT = (
  "black background, Aerial view, aerial view, overexposed, low quality, deformation, a poor "
  "composition, bad hands, bad teeth, bad eyes, bad limbs, distortion"
)
REPRODUCE_NEGATIVE_PROMPT = DEFAULT_NEGATIVE_PROMPT.removeprefix("black background, ")
INFERENCE_LENGTH = 512  # the pipeline's max_sequence_length
TRAINING_LENGTH = 226  # WanxEncoderWrapperT2V(max_length=226), the null-text cache length


@nnx.jit
def _encode(encoder, ids, mask):
  """Encoder forward with the padded rows zeroed (weights are traced arguments, not constants)."""
  hidden = encoder(ids, mask)
  return jnp.where(mask[..., None] > 0, hidden, jnp.zeros((), hidden.dtype))


def embed_prompts(
  encoder,
  tokenizer: Tokenizer,
  prompts: str | Sequence[str],
  *,
  max_length: int = INFERENCE_LENGTH,
  cache: EmbeddingCache | None = None,
  batch_size: int = 8,
) -> jax.Array:
  """Official prompt embeddings: (B, max_length, D) in the encoder's dtype, padded rows zero.

  With a `cache`, prompts already stored for this encoder's checkpoint are read from disk and the
  others are encoded and stored. `batch_size` bounds how many prompts go through the encoder at a
  time (results do not depend on it: every prompt has its own mask).
  """
  if isinstance(prompts, str):
    prompts = [prompts]
  prompts = list(prompts)
  if not prompts:
    raise ValueError("embed_prompts needs at least one prompt")
  out: list = [None] * len(prompts)
  todo = list(range(len(prompts)))
  if cache is not None:
    todo = []
    for i, p in enumerate(prompts):
      hit = cache.get(encoder, p, max_length)
      if hit is None:
        todo.append(i)
      else:
        out[i] = jnp.asarray(hit)
  for start in range(0, len(todo), batch_size):
    chunk = todo[start : start + batch_size]
    ids, mask = tokenizer([prompt_clean(prompts[i]) for i in chunk], max_length)
    embeds = _encode(encoder, jnp.asarray(ids), jnp.asarray(mask))
    for j, i in enumerate(chunk):
      out[i] = embeds[j]
      if cache is not None:
        cache.put(encoder, prompts[i], max_length, embeds[j])
  return jnp.stack(out)


class EmbeddingCache:
  """Prompt embeddings on disk, keyed by prompt, max_length, checkpoint id and dtype.

  Files live at `<root>/<key[:2]>/<key>.safetensors` with the key's fields stored beside the
  embedding and checked on read (a mismatch is a miss). Writes are atomic.
  """

  def __init__(self, root: str | os.PathLike):
    self.root = pathlib.Path(root)

  @staticmethod
  def _fields(encoder, prompt: str, max_length: int) -> dict[str, str]:
    checkpoint = getattr(encoder, "checkpoint_id", "")
    if not checkpoint:
      raise ValueError(
        "this encoder has no checkpoint id (random weights?); only encoders loaded with "
        "o2a_jax.convert.load_text_encoder can use an EmbeddingCache"
      )
    return {
      "prompt": prompt,
      "max_length": str(int(max_length)),
      "checkpoint": checkpoint,
      "dtype": jnp.dtype(encoder.dtype).name,
    }

  def path(self, encoder, prompt: str, max_length: int) -> pathlib.Path:
    key = hashlib.sha256(self._key_bytes(encoder, prompt, max_length)).hexdigest()
    return self.root / key[:2] / f"{key}.safetensors"

  def get(self, encoder, prompt: str, max_length: int) -> np.ndarray | None:
    """The stored (max_length, D) embedding, or None."""
    file = self.path(encoder, prompt, max_length)
    if not file.exists():
      return None
    with sio.TensorSource(file) as src:
      if set(src) != {"embeds", "key"} or bytes(src["key"]) != self._key_bytes(
        encoder, prompt, max_length
      ):
        return None  # a hash collision or a foreign file: recompute rather than trust it
      return np.array(src["embeds"])

  def put(self, encoder, prompt: str, max_length: int, embeds) -> pathlib.Path:
    file = self.path(encoder, prompt, max_length)
    key = np.frombuffer(self._key_bytes(encoder, prompt, max_length), np.uint8)
    tensors = {"embeds": np.asarray(jax.device_get(embeds)), "key": key}
    sio.save_dict(file, tensors, metadata=self._fields(encoder, prompt, max_length))
    return file

  def _key_bytes(self, encoder, prompt: str, max_length: int) -> bytes:
    return json.dumps(self._fields(encoder, prompt, max_length), sort_keys=True).encode()
