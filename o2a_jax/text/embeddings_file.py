"""Reading precomputed prompt embeddings from a file: the one reader for sampling and training.

Accepted files (each (S, text_dim) float, or (1, S, text_dim)):
- `.npy`: one array, the prompt's embedding;
- `.npz`: `text_embeds` (or `embeds`) and optionally `negative_text_embeds`;
- `.safetensors`: an `o2a text embed` cache entry (key `embeds`) or any file holding one tensor.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np

from o2a_jax.io import safetensors as sio


def read_embeddings(path: str | os.PathLike, text_dim: int) -> dict[str, np.ndarray]:
  """{"text": (S, text_dim) float32[, "negative": ...]} from `path`; errors name the file."""
  path = pathlib.Path(path)
  name = repr(str(path))
  if not path.is_file():
    raise FileNotFoundError(f"text embeddings file {name} does not exist")
  out: dict[str, np.ndarray] = {}
  if path.suffix == ".npy":
    out["text"] = np.load(path, allow_pickle=False)
  elif path.suffix == ".npz":
    with np.load(path, allow_pickle=False) as z:
      for key in ("text_embeds", "embeds", "negative_text_embeds"):
        if key in z:
          out["negative" if key.startswith("negative") else "text"] = np.asarray(z[key])
  elif path.suffix == ".safetensors":
    with sio.TensorSource(path) as src:
      keys = list(src)
      if "embeds" in src:
        out["text"] = np.array(src["embeds"])
      elif len(keys) == 1:
        out["text"] = np.array(src[keys[0]])
      else:
        raise ValueError(
          f"text embeddings {name} hold {len(keys)} tensors and no 'embeds'; expected one "
          "tensor or an `o2a text embed` cache entry"
        )
  else:
    raise ValueError(
      f"text embeddings {name}: use a .npy, an .npz or an `o2a text embed` .safetensors"
    )
  if "text" not in out:
    raise ValueError(
      f"text embeddings {name} hold no 'text_embeds'/'embeds' array (an .npz with "
      "text_embeds [and negative_text_embeds], or a cache file written by `o2a text embed`)"
    )
  for key, a in out.items():
    a = np.asarray(a, np.float32)
    a = a[0] if a.ndim == 3 and a.shape[0] == 1 else a
    if a.ndim != 2 or a.shape[1] != text_dim:
      raise ValueError(
        f"text embeddings {name} ({key}) have shape {a.shape}; the model needs (S, {text_dim})"
      )
    out[key] = a
  return out
