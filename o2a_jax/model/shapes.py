"""The denoiser's structure without its weights: abstract models, parameter shapes, the
architecture read back from official key shapes (the parameter-name table is `param_names`), and
random example inputs of the right shapes.

Nothing here allocates parameters (`nnx.eval_shape`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from o2a_jax import sharding
from o2a_jax.io.safetensors import CheckpointError
from o2a_jax.model.config import DenoiserConfig, hint_time_down
from o2a_jax.model.denoiser import Denoiser
from o2a_jax.vae.strides import LATENT_CHANNELS, pixel_frames

HEAD_DIM = 128  # every released Wan2.1 model; heads are not recoverable from shapes alone


def abstract_model(cfg: DenoiserConfig) -> Denoiser:
  """The model's structure with ShapeDtypeStruct leaves; nothing is allocated."""
  with nnx.use_eager_sharding(False), sharding.axis_rules():
    return nnx.eval_shape(lambda: Denoiser(cfg, rngs=nnx.Rngs(0)))


def param_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Dotted parameter path -> shape (works for concrete and abstract models)."""
  return {
    ".".join(map(str, path)): tuple(v.get_value().shape)
    for path, v in nnx.state(model, nnx.Param).flat_state()
  }


def _count(keys, pattern: str) -> int:
  rx = re.compile(pattern)
  idx = {int(m.group(1)) for k in keys if (m := rx.match(k))}
  if idx and idx != set(range(len(idx))):
    raise CheckpointError(f"non-contiguous layer indices for {pattern}: {sorted(idx)}")
  return len(idx)


def infer_config(shapes: Mapping[str, tuple[int, ...]], **overrides) -> DenoiserConfig:
  """The architecture from official keys and shapes (heads assume head dim 128)."""

  def get(key):
    if key not in shapes:
      raise CheckpointError(
        f"checkpoint lacks {key!r}: is this a One-to-All denoiser checkpoint (official keys)?"
      )
    return shapes[key]

  patch = get("patch_embedding.weight")  # (D, C, 1, p, p)
  dim = patch[0]
  head_dim = overrides.pop("head_dim", HEAD_DIM)
  if dim % head_dim:
    raise CheckpointError(f"model width {dim} is not a multiple of head dim {head_dim}")
  hint = _count(shapes, r"^input_hint_block\.down_blocks\.(\d+)\.resnets\.0\.conv1\.conv\.weight$")
  hint_ch = tuple(
    get(f"input_hint_block.down_blocks.{d}.resnets.0.conv1.conv.weight")[0] for d in range(hint)
  )
  cfg = dict(
    num_heads=dim // head_dim,
    head_dim=head_dim,
    num_layers=_count(shapes, r"^blocks\.(\d+)\.scale_shift_table$"),
    ffn_dim=get("blocks.0.ffn.net.0.proj.weight")[0],
    text_dim=get("condition_embedder.text_embedder.linear_1.weight")[1],
    freq_dim=get("condition_embedder.time_embedder.linear_1.weight")[1],
    ref_layers=_count(shapes, r"^refextractor\.blocks\.(\d+)\.scale_shift_table$"),
    pose_layers=_count(shapes, r"^controlnet\.blocks\.(\d+)\.scale_shift_table$"),
    in_channels=patch[1],
    ref_in_channels=get("refextractor.patch_embedding.weight")[1],
    out_channels=get("proj_out.weight")[0] // (patch[3] * patch[4]),
    patch_size=(patch[2], patch[3], patch[4]),
    hint_channels=hint_ch,
    cond_channels=get("image_to_cond.conv_in.weight")[0],
    cond_blocks=_count(shapes, r"^image_to_cond\.down_blocks\.(\d+)\.resnets\.0\.conv1\.weight$"),
  )
  cfg.update(overrides)
  try:
    # No pose encoder in a stage-1 checkpoint.
    cfg.setdefault("hint_time_down", hint_time_down(hint) if hint else ())
    return DenoiserConfig(**cfg)
  except ValueError as e:
    raise CheckpointError(f"checkpoint implies an invalid architecture: {e}") from e


def dtype_overrides(dtype) -> dict:
  name = jnp.dtype(dtype).name
  if name not in ("float32", "bfloat16"):
    raise ValueError(f"dtype must be float32 or bfloat16, got {name}")
  return dict(dtype=name, param_dtype=name)


def example_inputs(
  cfg: DenoiserConfig, *, batch: int = 1, latent_frames: int = 2, height: int = 4, width: int = 6,
  text_len: int = 3, timestep: float = 700.0, seed: int = 1,
) -> tuple[jax.Array, ...]:  # fmt: skip
  """Random denoiser inputs (latents, timestep, text, reference latents, pose video, reference
  pose) for a (`height`, `width`) latent grid of `latent_frames` frames, pixels in [-1, 1]:
  for tests and benchmarks that need the shapes, not meaningful values."""
  k = jax.random.split(jax.random.key(seed), 6)
  b, t, h, w = batch, latent_frames, height, width
  scale = cfg.spatial_down // cfg.patch_size[1]  # pixels per latent pixel (the pose encoder's)
  hh, ww = scale * h, scale * w
  return (
    jax.random.normal(k[0], (b, t, h, w, LATENT_CHANNELS)),
    jnp.full((b,), timestep),
    jax.random.normal(k[1], (b, text_len, cfg.text_dim)),
    jax.random.normal(k[2], (b, 1, h, w, cfg.ref_in_channels)),
    jax.random.uniform(k[3], (b, pixel_frames(t), hh, ww, 3), minval=-1, maxval=1),
    jax.random.uniform(k[4], (b, 1, hh, ww, 3), minval=-1, maxval=1),
  )
