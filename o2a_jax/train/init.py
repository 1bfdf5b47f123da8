"""Initialisation of each training stage (official initialisation; T1:440-443, T2:440-566).

Every initialiser builds the model with its default (PyTorch-like) random init and then fills
parameters by official key name, strictly: a key the source should provide but lacks, a key it
has that the target does not know, or a shape mismatch raises ValueError naming them.

  stage1_from_t2v(t2v, cfg)     Wan2.1-T2V transformer (diffusers layout) -> stage-1 model
                                (`cfg.stage1()`): backbone loaded; HRFA `add_k_proj`/`add_v_proj`
                                keep a default init (PyTorch's, biases included),
                                `norm_added_k` = 1; the extractor is
                                copied from the backbone (block k <- block k, time embedder and
                                projection, patch embedding with 16 zero mask channels); the
                                extractor output projections (`ref_blocks`) stay zero.
  stage2_from_stage1(ckpt, cfg) stage-1 checkpoint -> full model: everything of stage 1 loaded;
                                pose blocks copied from backbone blocks 0..P-1; `controlnet_zero`
                                and the conv_outs of the pose encoder and prefix encoder zero; the
                                rest of the pose encoder and prefix encoder default init.
  from_checkpoint(ckpt, cfg)    stage 2 -> stage 3, or a released One-to-All checkpoint for
                                fine-tuning: every key loaded, strictly.

Sources (`t2v`, `ckpt`) are a path (safetensors file or folder of shards) or a mapping from
official key to a PyTorch-layout array (e.g. `official_state_dict(model)`). The model is built on
the host from an abstract model (nothing is randomly initialised and then overwritten): loaded
tensors are copied, new ones get PyTorch's default init as the official `from_config` models
have it, the zero projections zeros. Host memory holds one float32 copy of the model.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax.convert.official import abstract_model
from o2a_jax.io import safetensors as sio
from o2a_jax.model import param_names as layout
from o2a_jax.model.config import DenoiserConfig
from o2a_jax.model.denoiser import Denoiser

# Keys a Wan2.1-T2V transformer lacks in the stage-1 model: the HRFA projections (default init)
# and the whole reference extractor (copied from the backbone below).
_NOT_IN_T2V = re.compile(
  r"^(blocks\.\d+\.attn1\.(add_k_proj|add_v_proj|norm_added_k)\.|refextractor\.)"
)
# Modules a stage-1 checkpoint lacks in the full model.
_NEW_IN_STAGE2 = re.compile(r"^(input_hint_block|controlnet|controlnet_zero|image_to_cond)\.")
# Zero-initialised projections of stage 2 (official initialisation).
_ZERO_IN_STAGE2 = re.compile(
  r"^(controlnet_zero\.\d+|input_hint_block\.conv_out\.conv|image_to_cond\.conv_out)\.(weight|bias)$"
)
_MASK_CHANNELS = "refextractor.patch_embedding.weight"


@contextlib.contextmanager
def _open(source) -> Iterator[Mapping[str, np.ndarray]]:
  if isinstance(source, (str, os.PathLike)):
    with sio.TensorSource(source) as src:
      yield src
  elif isinstance(source, Mapping):
    yield source
  else:
    raise ValueError(
      f"checkpoint source must be a safetensors path or a key -> array mapping, got {type(source)}"
    )


def _named(keys, what: str, limit: int = 8) -> str:
  keys = sorted(keys)
  more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
  return f"{what}: {keys[:limit]}{more}"


def torch_default(key: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """PyTorch's default init of an official tensor: norm weights 1 and biases 0; Linear and Conv
  weights and biases U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming-uniform with a = sqrt(5))."""
  if re.search(r"norm[^.]*\.weight$", key):
    return np.ones(shape, np.float32)
  if re.search(r"norm[^.]*\.bias$", key):
    return np.zeros(shape, np.float32)
  if len(shape) < 2 and not key.endswith(".bias"):
    raise ValueError(f"no PyTorch default init known for {key!r} {shape}")
  return rng.uniform(-1.0, 1.0, shape).astype(np.float32)  # scaled by the caller


class _Filler:
  """Fills an abstract model's parameters by official key; every key must be set exactly once."""

  def __init__(self, cfg: DenoiserConfig, seed: int):
    self.cfg = cfg
    self.rng = np.random.default_rng(seed)
    self.graphdef, self.state = nnx.split(abstract_model(cfg))
    self.vars = {".".join(map(str, p)): v for p, v in self.state.flat_state()}
    shapes = {p: tuple(v.get_value().shape) for p, v in self.vars.items()}
    self.entries = {e.key: e for e in layout.entries(shapes)}
    self.shapes = {k: layout.torch_shape(e, shapes[e.path]) for k, e in self.entries.items()}
    self.buffers = {p: np.zeros(shape, np.float32) for p, shape in shapes.items()}
    self.filled: set[str] = set()

  def set(self, key: str, value: np.ndarray) -> None:
    if key not in self.entries:
      raise ValueError(f"the model has no parameter {key!r}")
    if tuple(value.shape) != self.shapes[key]:
      shape, need = tuple(value.shape), self.shapes[key]
      raise ValueError(f"{key!r} has shape {shape}; the model needs {need}")
    e = self.entries[key]
    buf = self.buffers[e.path]
    t = layout.to_ours(e, np.asarray(value), self.cfg.head_dim)
    if e.layer is None:
      buf[...] = t
    else:
      buf[e.layer] = t
    self.filled.add(key)

  def get(self, key: str) -> np.ndarray:
    """The value set for `key`, in official layout."""
    if key not in self.filled:
      raise ValueError(f"{key!r} has not been initialised yet")
    e = self.entries[key]
    buf = self.buffers[e.path]
    return layout.to_official(e, buf if e.layer is None else buf[e.layer], self.cfg.head_dim)

  def load(self, src: Mapping[str, np.ndarray], keys) -> None:
    for k in keys:
      self.set(k, np.asarray(src[k], np.float32))

  def zero(self, key: str) -> None:
    self.set(key, np.zeros(self.shapes[key], np.float32))

  def default(self, key: str) -> None:
    """PyTorch's default init (fan-in from the layer's weight)."""
    shape = self.shapes[key]
    value = torch_default(key, shape, self.rng)
    if not re.search(r"norm[^.]*\.(weight|bias)$", key):
      weight = self.shapes[re.sub(r"\.bias$", ".weight", key)]
      value *= 1.0 / np.sqrt(int(np.prod(weight[1:])))
    self.set(key, value)

  def finish(self) -> Denoiser:
    unset = set(self.entries) - self.filled
    if unset:
      raise ValueError(_named(unset, "internal error: parameters left uninitialised"))
    dtype = np.dtype(self.cfg.params_dtype)
    for path, buf in self.buffers.items():
      self.vars[path].set_value(jnp.asarray(buf.astype(dtype)))
    return nnx.merge(self.graphdef, self.state)


def _expect(src_keys, want, what: str) -> None:
  src_keys, want = set(src_keys), set(want)
  missing, unexpected = want - src_keys, src_keys - want
  if missing or unexpected:
    parts = []
    if missing:
      parts.append(_named(missing, "missing"))
    if unexpected:
      parts.append(_named(unexpected, "unexpected"))
    raise ValueError(f"{what}: " + "; ".join(parts))


def _copy_extractor_from_backbone(f: _Filler) -> None:
  """Official `init_from_transformer` for `refextractor` (strict=False load of backbone keys)."""
  for key in f.entries:
    if not key.startswith("refextractor.") or key.startswith("refextractor.ref_blocks."):
      continue
    base = key[len("refextractor.") :]
    if key == _MASK_CHANNELS:
      w = f.get("patch_embedding.weight")  # (D, 16, 1, p, p): + 16 zero mask channels
      f.set(key, np.concatenate([w, np.zeros_like(w)], axis=1))
    elif base in f.entries:
      f.set(key, f.get(base))
    else:
      raise ValueError(f"extractor parameter {key!r} has no backbone counterpart {base!r}")


def stage1_from_t2v(t2v, cfg: DenoiserConfig, *, seed: int = 0) -> Denoiser:
  """The stage-1 model (`cfg.stage1()`) initialised from a Wan2.1-T2V transformer."""
  f = _Filler(cfg.stage1(), seed)
  want = [k for k in f.entries if not _NOT_IN_T2V.match(k)]
  with _open(t2v) as src:
    _expect(src.keys(), want, "Wan2.1-T2V transformer (diffusers layout)")
    f.load(src, want)
  for k in f.entries:
    if k.startswith("refextractor.ref_blocks."):
      f.zero(k)
    elif re.search(r"\.attn1\.(add_k_proj|add_v_proj|norm_added_k)\.", k):
      f.default(k)  # norm_added_k = 1; K/V projections PyTorch-default random
  _copy_extractor_from_backbone(f)
  return f.finish()


def stage2_from_stage1(ckpt, cfg: DenoiserConfig, *, seed: int = 0) -> Denoiser:
  """The full model (stages 2/3) initialised from a stage-1 checkpoint (official initialisation)."""
  if not (cfg.prefix_frame and cfg.pose_branch):
    raise ValueError("stage 2 needs the full model config (prefix_frame and pose_branch True)")
  f = _Filler(cfg, seed)
  want = [k for k in f.entries if not _NEW_IN_STAGE2.match(k)]
  with _open(ckpt) as src:
    _expect(src.keys(), want, "stage-1 checkpoint")
    f.load(src, want)
  for key in f.entries:
    m = re.match(r"^controlnet\.(blocks\.\d+\..*)$", key)
    if m:  # official: controlnet.load_state_dict(backbone keys, strict=False)
      if m.group(1) not in f.entries:
        raise ValueError(f"pose parameter {key!r} has no backbone counterpart {m.group(1)!r}")
      f.set(key, f.get(m.group(1)))
    elif _ZERO_IN_STAGE2.match(key):
      f.zero(key)
    elif _NEW_IN_STAGE2.match(key):
      f.default(key)  # the rest of the pose encoder and the prefix encoder
  return f.finish()


def from_checkpoint(ckpt, cfg: DenoiserConfig, *, seed: int = 0) -> Denoiser:
  """Every parameter from `ckpt` (stage 2 -> 3, or a released One-to-All checkpoint).

  `seed` is accepted for a uniform signature; nothing is random here."""
  del seed
  f = _Filler(cfg, 0)
  with _open(ckpt) as src:
    _expect(src.keys(), f.entries, "checkpoint")
    f.load(src, list(f.entries))
  return f.finish()
