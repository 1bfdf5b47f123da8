"""Loading what inference needs: the denoiser, the VAE, text embeddings, pose files.

- Denoiser: a native checkpoint folder (`params/` + `config/`, `load_native`) or an official
  safetensors folder or file (`load_official`). Under `jax.set_mesh` both place the parameters
  on the mesh.
- Text embeddings: from the JAX text encoder (`--text-encoder DIR --tokenizer DIR`, optionally
  cached with `--text-cache DIR`), else from files (`--text-embeds FILE`, `--negative-text-embeds
  FILE`): an `o2a text embed` cache file (`.safetensors` holding `embeds`) or an `.npz` holding
  `text_embeds` (or `embeds`) and optionally `negative_text_embeds`. With none of these, sampling
  refuses to run unless `--empty-text-embeds zeros` asks for all-zero embeddings (puppet models
  and tests: real models were never trained on zeros).
- Pose files: the JSON format of `o2a_jax.pose.formats` (kind coco_wholebody or dwpose) and the
  official per-video `.npy` pose-dict files.
"""

from __future__ import annotations

import json
import pathlib

import numpy as np

from o2a_jax.inference.prepare import Poses
from o2a_jax.io.output_paths import publish_mode
from o2a_jax.text.embeddings_file import read_embeddings

ZEROS_TEXT_LENGTH = 512  # the inference prompt length


def is_native_checkpoint(path) -> bool:
  path = pathlib.Path(path)
  return (path / "params").is_dir() and (path / "config").exists()


def load_denoiser(path, *, dtype: str = "bfloat16", attn_impl: str | None = None, progress=None):
  """A native checkpoint folder or an official safetensors folder/file -> Denoiser."""
  import jax.numpy as jnp

  from o2a_jax.checkpoint import load_native
  from o2a_jax.convert import load_official

  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
  overrides = {} if attn_impl is None else {"attn_impl": attn_impl}
  if is_native_checkpoint(path):
    model = load_native(path, dtype=dtype, param_dtype=dtype, **overrides)
  else:
    model = load_official(path, dtype=jnp.dtype(dtype), progress=progress, **overrides)
  check_finite(model, f"checkpoint {str(path)!r}")
  return model


def check_finite(module, source: str) -> None:
  """Raises if any parameter of `module` holds NaN or inf (it would sample black frames)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx

  state = nnx.state(module, nnx.Param)
  leaves = jax.tree_util.tree_leaves_with_path(state)
  flags = jax.jit(lambda xs: jnp.stack([jnp.all(jnp.isfinite(x)) for x in xs]))(
    [x for _, x in leaves]
  )
  bad = [jax.tree_util.keystr(k) for (k, _), ok in zip(leaves, np.asarray(flags)) if not ok]
  if bad:
    raise ValueError(
      f"{source}: {len(bad)} parameter tensor(s) hold NaN or inf values (first: {bad[0]}); the "
      "checkpoint is corrupt or was saved from a diverged run"
    )


def text_embeddings(
  text_dim: int,
  *,
  need_negative: bool,
  text_encoder: str | None = None,
  tokenizer: str | None = None,
  text_dtype: str = "float32",
  text_cache: str | None = None,
  prompt: str = "",
  negative_prompt: str = "",
  text_embeds: str | None = None,
  negative_text_embeds: str | None = None,
  empty_text_embeds: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """(text, negative) (S, text_dim) float32 embeddings, from the first source given: a text
  encoder and tokenizer folder (with an optional embedding cache), embeddings files, or zeros
  (`empty_text_embeds="zeros"`). Errors name the command-line option to give."""
  if text_encoder:
    if not tokenizer:
      raise ValueError("--text-encoder needs --tokenizer (the release's tokenizer/ folder)")
    import jax.numpy as jnp

    from o2a_jax.convert import load_text_encoder
    from o2a_jax.text import EmbeddingCache, embed_prompts, load_tokenizer

    encoder = load_text_encoder(text_encoder, dtype=jnp.dtype(text_dtype))
    cache = EmbeddingCache(text_cache) if text_cache else None
    emb = embed_prompts(encoder, load_tokenizer(tokenizer), [prompt, negative_prompt], cache=cache)
    emb = np.asarray(emb, np.float32)
    if emb.shape[-1] != text_dim:
      raise ValueError(f"text encoder width {emb.shape[-1]} != the model's text_dim {text_dim}")
    return emb[0], emb[1]
  if text_embeds:
    got = read_embeddings(text_embeds, text_dim)
    if negative_text_embeds:
      got["negative"] = read_embeddings(negative_text_embeds, text_dim)["text"]
    if "negative" not in got:
      if need_negative:
        raise ValueError(
          "guidance needs negative-prompt embeddings: give --negative-text-embeds FILE (or an "
          ".npz with negative_text_embeds), or set --image-guidance 1 for unguided sampling"
        )
      got["negative"] = np.zeros_like(got["text"])  # unused by one-pass sampling
    text, neg = got["text"], got["negative"]
    if neg.shape != text.shape:  # the batched guidance passes need equal lengths
      length = max(len(text), len(neg))
      pad = lambda a: np.pad(a, ((0, length - len(a)), (0, 0)))  # padded rows are zero anyway
      text, neg = pad(text), pad(neg)
    return text, neg
  if empty_text_embeds == "zeros":
    z = np.zeros((ZEROS_TEXT_LENGTH, text_dim), np.float32)
    return z, z
  raise ValueError(
    "no text conditioning: give --text-encoder DIR --tokenizer DIR, or --text-embeds FILE "
    "(from `o2a text embed`), or --empty-text-embeds zeros for puppet models and tests"
  )


def read_pose_file(path) -> Poses:
  """A pose JSON (kind coco_wholebody or dwpose) or an official `.npy` pose file -> Poses, with
  at least one usable body joint."""
  poses = _read_pose_file(path)
  poses.check_usable(f"pose file {str(path)!r}")
  return poses


def _read_pose_file(path) -> Poses:
  from o2a_jax import pose as pose_lib

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"pose file {str(path)!r} does not exist")
  if path.suffix == ".json":
    try:
      kind = json.loads(path.read_text(encoding="utf-8")).get("kind")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as e:
      raise ValueError(f"pose file {str(path)!r} is not valid o2a-pose JSON ({e})") from e
    if kind == "coco_wholebody":
      kp, w, h = pose_lib.read_keypoints_json(path)
      return Poses(kp133=kp, width=w, height=h)
    dicts, w, h = pose_lib.read_poses_json(path)
    return Poses(dicts=dicts, width=w, height=h)
  if path.suffix == ".npy":
    items = pose_lib.read_official_npy(path)
    if items and "bodies" not in items[0]:
      raise ValueError(
        f"{str(path)!r} is a raw DWPose pose pool (`_raw.npy`); use the per-video `_pose.npy` "
        "file or convert with o2a_jax.pose.from_dwpose_raw"
      )
    return Poses(dicts=items)
  raise ValueError(f"pose file {str(path)!r}: use a .json (o2a-pose) or an official .npy file")


POSE_SUFFIXES = (".json", ".npy")


def write_pose_npy(path, poses: list[dict]) -> None:
  """Writes pose dicts as an official per-video `.npy` pose file (object array), atomically."""
  import os
  import tempfile

  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  arr = np.empty(len(poses), dtype=object)
  arr[:] = list(poses)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".npy", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.save(f, arr, allow_pickle=True)
    publish_mode(tmp)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
