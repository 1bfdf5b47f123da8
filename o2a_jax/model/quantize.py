"""Weight-only int8 (or fp8) quantisation of the denoiser's transformer linears.

Every `Dense` of the transformer blocks (main, pose and reference-extractor blocks: attention
projections, HRFA key/value maps, feed-forward layers) stores its kernel as int8 codes (or fp8
e4m3 values) with one float32 scale per output channel (symmetric, max |W| / 127, or / 448 for
fp8); the embedders, the pose branch's zero-initialised outputs and the output head stay in the
model's dtype. See `layers.linear.Dense` for the matmul.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx

from o2a_jax import sharding
from o2a_jax.layers.linear import QuantScale, dense_layers
from o2a_jax.model.config import DenoiserConfig
from o2a_jax.model.denoiser import Denoiser

SCHEMES = {"int8": "int8-weight-per-channel", "fp8": "fp8e4m3-weight-per-channel"}
TARGET = re.compile(r"^(blocks|pose_blocks|refextractor\.blocks)\.")


def target_paths(model: nnx.Module) -> list[str]:
  return sorted(p for p in dense_layers(model) if TARGET.match(p))


def quantized_paths(model: nnx.Module) -> list[str]:
  return sorted(p for p, d in dense_layers(model).items() if d.quantized)


def quantized_format(model: nnx.Module) -> str | None:
  """ "int8" or "fp8" for a quantised model (one format per model), None for a float one."""
  formats = {d.quant_format for d in dense_layers(model).values() if d.quantized}
  if len(formats) > 1:
    raise ValueError(f"the model mixes quantisation formats {sorted(formats)}")
  return formats.pop() if formats else None


def quantize(model: nnx.Module, paths: list[str] | None = None, fmt: str = "int8") -> list[str]:
  """Quantises the transformer linears (or exactly `paths`) to `fmt` ("int8" or "fp8") in
  place; returns the paths."""
  layers = dense_layers(model)
  paths = target_paths(model) if paths is None else list(paths)
  unknown = [p for p in paths if p not in layers]
  if unknown:
    raise ValueError(f"no dense layer at {unknown} in this model")
  for p in paths:
    layers[p].quantize(fmt)
  sharding.place_variables(model, QuantScale)  # the scales follow their logical axes
  return paths


def abstract_quantized(
  cfg: DenoiserConfig, paths: list[str] | None = None, fmt: str = "int8"
) -> Denoiser:
  """The quantised model's structure (code kernels, scales) with ShapeDtypeStruct leaves."""

  def build():
    model = Denoiser(cfg, rngs=nnx.Rngs(0))
    quantize(model, paths, fmt)
    return model

  with nnx.use_eager_sharding(False), sharding.axis_rules():
    return nnx.eval_shape(build)


def weight_bytes(model: nnx.Module) -> int:
  """Bytes of the model's parameters and scales (concrete or abstract)."""
  state = nnx.state(model, nnx.Param, QuantScale)
  return sum(int(np.prod(x.shape)) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(state))
