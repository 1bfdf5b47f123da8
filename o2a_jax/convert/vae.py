"""Loading the Wan2.1 VAE from safetensors: the diffusers `AutoencoderKLWan` layout or the original
one.

`load_vae(path)` accepts a diffusers VAE folder (`config.json` + `*.safetensors`) or one
`.safetensors` file, in the diffusers key layout or the original `Wan2.1_VAE.pth` layout (after
converting the `.pth` to safetensors; pickles are refused with the conversion command, never
opened). The architecture is inferred from the shapes and cross-checked against `config.json` when
there is one. Keys are checked strictly before anything is loaded: a missing, unexpected or
mis-shaped key raises `ValueError` naming it.

`save_vae` writes the diffusers folder layout (weights + `config.json`, atomically), with the
VAE's own per-channel latent statistics as `latents_mean` / `latents_std` when given;
`read_latent_stats` reads them back."""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.io.atomic import atomic_path
from o2a_jax.io.json_files import read_json
from o2a_jax.io.safetensors import (
  CheckpointError,
  TensorSource,
  check_keys,
  write_file,
)
from o2a_jax.vae.model import VAEConfig, WanVAE

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"

_RESIDUAL = {
  "residual.0.gamma": "norm1.gamma",
  "residual.2.weight": "conv1.weight",
  "residual.2.bias": "conv1.bias",
  "residual.3.gamma": "norm2.gamma",
  "residual.6.weight": "conv2.weight",
  "residual.6.bias": "conv2.bias",
  "shortcut.weight": "conv_shortcut.weight",
  "shortcut.bias": "conv_shortcut.bias",
}
_TOP = {
  "conv1.weight": "quant_conv.weight",
  "conv1.bias": "quant_conv.bias",
  "conv2.weight": "post_quant_conv.weight",
  "conv2.bias": "post_quant_conv.bias",
}


# --- names: our parameter paths <-> diffusers keys ---------------------------------------------


def _diffusers_key(path: tuple, shapes: dict[tuple, tuple]) -> str:
  """Diffusers key of one of our parameters (path as in `nnx.to_flat_state`)."""
  parts = []
  for p in path[:-1]:
    if p == "upsampler":
      parts += ["upsamplers", "0"]
    elif p == "attention":
      parts += ["attentions", "0"]
    else:
      parts.append(str(p))
  leaf = path[-1]
  if leaf.endswith(("_weight", "_bias")):  # attention 1x1 convs stored as matrices
    name, kind = leaf.rsplit("_", 1)
    parts += [name, kind]
  elif leaf in ("weight", "bias") and len(shapes[(*path[:-1], "weight")]) == 4:
    parts += ["resample", "1", leaf]  # the 2-D conv of nn.Sequential(pad/upsample, conv)
  else:
    parts.append(leaf)
  return ".".join(parts)


def _torch_shape(path: tuple, shape: tuple) -> tuple:
  leaf = path[-1]
  if leaf == "gamma":
    return (shape[0], 1, 1) if "attention" in path else (shape[0], 1, 1, 1)
  if leaf.endswith("_weight"):
    return (shape[1], shape[0], 1, 1)
  if len(shape) == 5:
    return (shape[4], shape[3], shape[0], shape[1], shape[2])
  if len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  return tuple(shape)


def _from_torch(path: tuple, arr: np.ndarray) -> np.ndarray:
  leaf = path[-1]
  if leaf == "gamma":
    return arr.reshape(arr.shape[0])
  if leaf.endswith("_weight"):
    return arr.reshape(arr.shape[0], arr.shape[1]).T
  if arr.ndim == 5:
    return arr.transpose(2, 3, 4, 1, 0)
  if arr.ndim == 4:
    return arr.transpose(2, 3, 1, 0)
  return arr


def _to_torch(path: tuple, arr: np.ndarray, torch_shape: tuple) -> np.ndarray:
  leaf = path[-1]
  if leaf == "gamma" or leaf.endswith("_weight"):
    return (arr.T if leaf.endswith("_weight") else arr).reshape(torch_shape)
  if arr.ndim == 5:
    return arr.transpose(4, 3, 0, 1, 2)
  if arr.ndim == 4:
    return arr.transpose(3, 2, 0, 1)
  return arr


def vae_key_map(model: WanVAE) -> dict[str, tuple[tuple, tuple]]:
  """diffusers key -> (our parameter path, PyTorch shape) for every parameter of `model`."""
  flat = {tuple(k): tuple(v.shape) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  return {_diffusers_key(p, flat): (p, _torch_shape(p, s)) for p, s in flat.items()}


def vae_state_dict(model: WanVAE) -> dict[str, np.ndarray]:
  """The diffusers `AutoencoderKLWan` state dict of `model` (PyTorch layouts, parameter dtype)."""
  flat = {tuple(k): v.get_value() for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  return {
    key: np.ascontiguousarray(_to_torch(p, np.asarray(flat[p]), shape))
    for key, (p, shape) in vae_key_map(model).items()
  }


# --- the original (non-diffusers) layout ---------------------------------------------------------


def _is_original(keys) -> bool:
  return "encoder.conv1.weight" in keys or any(k.startswith("encoder.downsamples.") for k in keys)


def _original_to_diffusers(keys, num_res_blocks: int, n_stages: int) -> dict[str, str]:
  """Original key -> diffusers key (as diffusers' `convert_wan_vae_to_diffusers`, for any depth).

  Keys the layout does not know are mapped to themselves (they then show up as unexpected)."""
  # Decoder `upsamples` is flat: per stage num_res_blocks + 1 residual blocks, then an upsampler.
  dec = {}
  i = 0
  for stage in range(n_stages):
    for j in range(num_res_blocks + 1):
      dec[i] = f"up_blocks.{stage}.resnets.{j}"
      i += 1
    if stage != n_stages - 1:
      dec[i] = f"up_blocks.{stage}.upsamplers.0"
      i += 1

  def residual(rest):
    return _RESIDUAL.get(rest, rest)

  out = {}
  for k in keys:
    new = k
    if k in _TOP:
      new = _TOP[k]
    elif m := re.fullmatch(r"(encoder|decoder)\.conv1\.(weight|bias)", k):
      new = f"{m[1]}.conv_in.{m[2]}"
    elif m := re.fullmatch(r"(encoder|decoder)\.head\.(0|2)\.(gamma|weight|bias)", k):
      new = f"{m[1]}.{'norm_out' if m[2] == '0' else 'conv_out'}.{m[3]}"
    elif m := re.fullmatch(r"(encoder|decoder)\.middle\.(\d+)\.(.+)", k):
      idx, rest = int(m[2]), m[3]
      if idx == 1:
        new = f"{m[1]}.mid_block.attentions.0.{rest}"
      elif idx in (0, 2):
        new = f"{m[1]}.mid_block.resnets.{idx // 2}.{residual(rest)}"
    elif m := re.fullmatch(r"encoder\.downsamples\.(\d+)\.(.+)", k):
      new = f"encoder.down_blocks.{m[1]}.{residual(m[2])}"
    elif (m := re.fullmatch(r"decoder\.upsamples\.(\d+)\.(.+)", k)) and int(m[1]) in dec:
      base = dec[int(m[1])]
      new = f"decoder.{base}.{m[2] if 'upsamplers' in base else residual(m[2])}"
    out[k] = new
  return out


# --- architecture inference ----------------------------------------------------------------------


def _infer_config(shapes: dict[str, tuple], config_json: dict | None) -> VAEConfig:
  def need(key):
    if key not in shapes:
      raise CheckpointError(
        f"VAE checkpoint has no {key!r}; is this an AutoencoderKLWan state dict?"
      )
    return shapes[key]

  base = need("encoder.conv_in.weight")[0]
  z_dim = need("post_quant_conv.weight")[0]
  blocks: dict[int, set[str]] = {}
  for k in shapes:
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.(.+)", k):
      blocks.setdefault(int(m[1]), set()).add(m[2])
  if not blocks or sorted(blocks) != list(range(len(blocks))):
    raise CheckpointError(
      f"VAE encoder down blocks are missing or not contiguous: {sorted(blocks)}"
    )
  stages, temporal, current = [], [], []
  for i in range(len(blocks)):
    names = blocks[i]
    if "resample.1.weight" in names:
      stages.append(current)
      temporal.append("time_conv.weight" in names)
      current = []
    elif "conv1.weight" in names:
      current.append(need(f"encoder.down_blocks.{i}.conv1.weight")[0])
    else:
      raise CheckpointError(
        f"encoder.down_blocks.{i} is neither a residual block nor a resample "
        f"(keys {sorted(names)}); "
        "attention in the down blocks (attn_scales) is not supported"
      )
  stages.append(current)
  counts = {len(s) for s in stages}
  if len(counts) != 1 or 0 in counts:
    raise CheckpointError(
      f"VAE down stages have unequal residual block counts {[len(s) for s in stages]}"
    )
  mult = []
  for s in stages:
    if s[-1] % base:
      raise CheckpointError(f"VAE stage width {s[-1]} is not a multiple of the base width {base}")
    mult.append(s[-1] // base)
  cfg = VAEConfig(
    base_dim=base,
    z_dim=z_dim,
    dim_mult=tuple(mult),
    num_res_blocks=counts.pop(),
    temperal_downsample=tuple(temporal),
  )
  if config_json is not None:
    if config_json.get("attn_scales"):
      raise CheckpointError(
        f"attn_scales={config_json['attn_scales']} is not supported (Wan uses [])"
      )
    declared = {
      "base_dim": cfg.base_dim,
      "z_dim": cfg.z_dim,
      "dim_mult": list(cfg.dim_mult),
      "num_res_blocks": cfg.num_res_blocks,
      "temperal_downsample": list(cfg.temperal_downsample),
    }
    wrong = [
      f"{k}={config_json[k]} (weights say {v})"
      for k, v in declared.items()
      if k in config_json and list(np.atleast_1d(config_json[k])) != list(np.atleast_1d(v))
    ]
    if wrong:
      raise CheckpointError("config.json disagrees with the weights: " + ", ".join(wrong))
    if "latents_mean" in config_json or "latents_std" in config_json:
      try:
        cfg = dataclasses.replace(
          cfg,
          latents_mean=config_json.get("latents_mean"),
          latents_std=config_json.get("latents_std"),
        )
      except (ValueError, TypeError) as e:
        raise CheckpointError(f"config.json latents_mean/latents_std: {e}") from None
  return cfg


# --- the loader ----------------------------------------------------------------------------------


def load_vae(path: str | os.PathLike, *, dtype=jnp.float32, precision=None, **tiling) -> WanVAE:
  """Loads the Wan2.1 VAE (diffusers folder or `.safetensors` file; diffusers or original keys).

  `dtype`: parameter and compute dtype (float32 or bfloat16). `tiling`: overrides of the `VAEConfig`
  tiling fields (`encode_tile`, `encode_overlap`, `decode_tile`, `decode_overlap`, latent pixels).
  Raises ValueError (`CheckpointError`) naming missing, unexpected or mis-shaped keys; nothing is
  loaded partially.
  """
  dtype = jnp.dtype(dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise ValueError(f"load_vae: dtype must be a float dtype (float32 or bfloat16), got {dtype}")
  path = pathlib.Path(path)
  config_json = None
  if path.is_dir() and (path / "config.json").exists():
    config_json = read_json(path / "config.json", "the VAE's diffusers config")
  with TensorSource(path) as src:
    found = src.shapes()
    rename = {k: k for k in found}
    layout = "diffusers"
    if _is_original(found):
      layout = "original Wan2.1"
      enc = sorted(
        {int(m[1]) for k in found if (m := re.match(r"encoder\.downsamples\.(\d+)\.", k))}
      )
      resamples = [i for i in enc if f"encoder.downsamples.{i}.resample.1.weight" in found]
      n_res = resamples[0] if resamples else len(enc)
      rename = _original_to_diffusers(found, n_res, len(resamples) + 1)
    by_new = {}
    for old, new in rename.items():
      if new in by_new:
        raise CheckpointError(f"keys {by_new[new]!r} and {old!r} map to the same parameter {new!r}")
      by_new[new] = old
    shapes = {new: found[old] for new, old in by_new.items()}
    cfg = _infer_config(shapes, config_json)
    if tiling:
      import dataclasses

      cfg = dataclasses.replace(cfg, **tiling)
    abstract = nnx.eval_shape(lambda: WanVAE(cfg, dtype=dtype, precision=precision))
    key_map = vae_key_map(abstract)
    mapped = ", names mapped to diffusers" if layout != "diffusers" else ""
    what = f"VAE checkpoint {path} ({layout} layout{mapped})"
    check_keys({k: s for k, (_, s) in key_map.items()}, shapes, what)
    values = {}
    for key, (p, _) in key_map.items():
      arr = np.asarray(src[by_new[key]])
      if not np.issubdtype(arr.dtype, np.floating):
        raise CheckpointError(f"{path}: tensor {by_new[key]!r} has non-float dtype {arr.dtype}")
      values[p] = jnp.asarray(_from_torch(p, arr).astype(np.float32), dtype=dtype)
  graphdef, state = nnx.split(abstract)
  flat = dict(nnx.to_flat_state(state))
  for p, v in values.items():
    flat[p] = flat[p].replace(value=v)
  missing = [p for p, v in flat.items() if isinstance(v.get_value(), jax.ShapeDtypeStruct)]
  if missing:  # every parameter comes from the file; anything else is a bug here
    raise RuntimeError(f"load_vae left parameters unset: {missing[:12]}")
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


# --- saving: the diffusers folder layout that load_vae reads ----------------------------------


def diffusers_config(cfg: VAEConfig, latents_mean=None, latents_std=None) -> dict:
  d = {
    "_class_name": "AutoencoderKLWan",
    "_diffusers_version": "0.33.0",
    "attn_scales": [],
    "base_dim": cfg.base_dim,
    "dim_mult": list(cfg.dim_mult),
    "dropout": 0.0,
    "num_res_blocks": cfg.num_res_blocks,
    "temperal_downsample": list(cfg.temperal_downsample),
    "z_dim": cfg.z_dim,
  }
  if latents_mean is not None:
    d["latents_mean"] = [float(v) for v in latents_mean]
    d["latents_std"] = [float(v) for v in latents_std]
  return d


def save_vae(
  vae: WanVAE, path: str | os.PathLike, *, latents_mean=None, latents_std=None, extra=None
) -> pathlib.Path:
  """Writes a diffusers-layout VAE folder (weights + config.json) atomically; replaces `path`.

  `latents_mean` / `latents_std`: the latent statistics to record (default: the VAE's own, if
  its config has them). `extra`: optional JSON-able dict stored as `training.json`.
  """
  if (latents_mean is None) != (latents_std is None):
    raise ValueError("save_vae: give both latents_mean and latents_std, or neither")
  if latents_mean is None:
    latents_mean, latents_std = vae.cfg.latents_mean, vae.cfg.latents_std
  path = pathlib.Path(path)
  tensors = {k: np.asarray(v, np.float32) for k, v in vae_state_dict(vae).items()}
  items = [(k, v.dtype, v.shape) for k, v in tensors.items()]
  old = None
  with atomic_path(path, is_dir=True) as tmp:
    write_file(tmp / WEIGHTS_NAME, items, tensors.__getitem__, metadata={"format": "pt"})
    cfg = diffusers_config(vae.cfg, latents_mean, latents_std)
    (tmp / "config.json").write_text(json.dumps(cfg, indent=1))
    if extra is not None:
      (tmp / "training.json").write_text(json.dumps(extra, indent=1))
    if path.exists():  # atomic_path renames onto `path`; move an old folder out of the way first
      old = path.with_name(f".{path.name}.old")
      shutil.rmtree(old, ignore_errors=True)
      os.replace(path, old)
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
  return path


def read_latent_stats(path: str | os.PathLike) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(latents_mean, latents_std) from a VAE folder's `config.json` (diffusers field names)."""
  cfg_path = pathlib.Path(path) / "config.json"
  if not cfg_path.is_file():
    raise FileNotFoundError(
      f"{cfg_path} not found; latent statistics live in the VAE's config.json"
    )
  cfg = read_json(cfg_path, "the VAE's config with latents_mean/latents_std")
  if "latents_mean" not in cfg or "latents_std" not in cfg:
    raise ValueError(
      f"{cfg_path} has no latents_mean/latents_std; compute them with "
      "o2a_jax.puppet.vae_train.latent_stats (or your own) and save with "
      "save_vae(..., latents_mean=, latents_std=)"
    )
  return tuple(cfg["latents_mean"]), tuple(cfg["latents_std"])
