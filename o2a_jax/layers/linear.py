"""Dense layers with logical sharding annotations and the official init choices, optionally with
low-rank adapters (LoRA) and weight-only int8 or fp8 storage.

A `Dense` is an `nnx.Linear` (kernel (in, out), bias (out,)); its parameter paths and values are
the same with or without the two options, so the official key table, conversion and the parity
fixtures see one layer. The options add variables of their own types, which are not `nnx.Param`s:

- `add_adapter(rank, scale, key)`: `lora_a` (in, r) and `lora_b` (r, out) (`LoRAParam`, B zero at
  first, so an adapted layer starts exactly as the base); y = x W + b + scale · (x A) B.
- `quantize(fmt)`: the kernel becomes int8 (or fp8 e4m3) codes with a per-output-channel symmetric
  scale (`QuantScale` (out,)): y = (x q) · s + b, the codes converted inside the jitted matmul
  (exactly: int8 and e4m3 values are representable in bf16 and f32).

Stacked layers (a leading `layers` axis, see `o2a_jax.model.stack`) get stacked adapters and
scales, which the layer scan slices like every other variable.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# PyTorch's nn.Linear default init is kaiming-uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)):
# variance 1/(3 fan_in). Used for layers trained from scratch (HRFA projections, pose blocks).
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

# Code dtype and largest code of each storage format; symmetric, so int8 never uses -128 and
# negation stays exact. fp8 is e4m3 (max 448), the weight format of fp8 hardware.
FORMATS = {"int8": (jnp.int8, 127.0), "fp8": (jnp.float8_e4m3fn, 448.0)}


class LoRAParam(nnx.Variable):
  """Low-rank adapter weights. Not an `nnx.Param`: walks over the base model's parameters (the
  official key table, conversion, trainable sets, counts) never see them; LoRA training selects
  them by this type."""


class QuantScale(nnx.Variable):
  """Per-output-channel scales of an int8 or fp8 kernel (weight-only quantisation)."""


def _names(variable: nnx.Variable):
  return variable.get_metadata().get("out_sharding")


class Dense(nnx.Linear):
  """`nnx.Linear` with optional low-rank adapters and int8/fp8 kernel storage (module
  docstring)."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    # Data attributes (nnx.data): variables may be assigned to them later.
    self.lora_a: LoRAParam | None = nnx.data(None)
    self.lora_b: LoRAParam | None = nnx.data(None)
    self.lora_scale = 0.0
    self.kernel_scale: QuantScale | None = nnx.data(None)

  @property
  def quantized(self) -> bool:
    return self.kernel_scale is not None

  @property
  def quant_format(self) -> str | None:
    """ "int8", "fp8" or None (float kernel)."""
    if not self.quantized:
      return None
    dtype = jnp.dtype(self.kernel.get_value().dtype)
    return next(f for f, (dt, _) in FORMATS.items() if jnp.dtype(dt) == dtype)

  @property
  def adapter_rank(self) -> int:
    return 0 if self.lora_a is None else int(self.lora_a.get_value().shape[-1])

  def add_adapter(self, rank: int, *, scale: float, key: jax.Array) -> None:
    """Adds LoRA factors: A ~ U(+-1/sqrt(in)) (PEFT's kaiming init), B = 0, float32."""
    if self.lora_a is not None:
      raise ValueError("this layer already has an adapter")
    if rank < 1:
      raise ValueError(f"LoRA rank must be >= 1, got {rank}")
    shape = self.kernel.get_value().shape
    lead, (d_in, d_out) = shape[:-2], shape[-2:]
    names = _names(self.kernel)
    a_names = None if names is None else (*names[:-1], None)
    b_names = None if names is None else (*names[:-2], None, names[-1])
    bound = 1.0 / d_in**0.5
    a = jax.random.uniform(key, (*lead, d_in, rank), jnp.float32, -bound, bound)
    b = jnp.zeros((*lead, rank, d_out), jnp.float32)
    with nnx.use_eager_sharding(False):  # annotated only: the caller places them on a mesh
      self.lora_a = LoRAParam(a, out_sharding=a_names)
      self.lora_b = LoRAParam(b, out_sharding=b_names)
    self.lora_scale = float(scale)

  def adapter_delta(self) -> jax.Array:
    """scale · A B, float32, in the kernel's (possibly stacked) shape."""
    if self.lora_a is None:
      raise ValueError("this layer has no adapter")
    a, b = self.lora_a.get_value(), self.lora_b.get_value()
    return self.lora_scale * jnp.einsum("...ir,...ro->...io", a.astype(jnp.float32), b)

  def merge_adapter(self) -> None:
    """Folds the adapter into the kernel (in the kernel's dtype) and removes it."""
    if self.quantized:
      raise ValueError("cannot merge an adapter into a quantised kernel; merge before quantizing")
    kernel = self.kernel.get_value()
    merged = kernel.astype(jnp.float32) + self.adapter_delta()
    self.kernel.set_value(merged.astype(kernel.dtype))
    self.lora_a = self.lora_b = None
    self.lora_scale = 0.0

  def quantize(self, fmt: str = "int8") -> None:
    """Stores the kernel as `fmt` codes ("int8" or "fp8") with per-output-channel scales
    max|W| / (largest code): round to nearest (int8) or to the nearest e4m3 value (fp8)."""
    if fmt not in FORMATS:
      raise ValueError(f"quantisation format {fmt!r} is not one of {sorted(FORMATS)}")
    if self.quantized:
      if self.quant_format != fmt:
        raise ValueError(f"this layer is already {self.quant_format}, not {fmt}")
      return
    dtype, qmax = FORMATS[fmt]
    kernel = self.kernel.get_value().astype(jnp.float32)
    scale = jnp.max(jnp.abs(kernel), axis=-2) / qmax  # (..., out)
    scale = jnp.where(scale > 0, scale, 1.0)
    q = jnp.clip(kernel / scale[..., None, :], -qmax, qmax)
    q = (jnp.round(q) if fmt == "int8" else q).astype(dtype)
    names = _names(self.kernel)
    self.kernel.set_value(q)
    with nnx.use_eager_sharding(False):  # annotated only: the caller places it on a mesh
      self.kernel_scale = QuantScale(
        scale, out_sharding=None if names is None else (*names[:-2], names[-1])
      )

  def dequantized_kernel(self) -> jax.Array:
    """The kernel in float32 (codes times their scales when quantized)."""
    kernel = self.kernel.get_value().astype(jnp.float32)
    if not self.quantized:
      return kernel
    return kernel * self.kernel_scale.get_value()[..., None, :]

  def __call__(self, x: jax.Array) -> jax.Array:
    if self.quantized:
      dt = self.dtype or x.dtype
      # codes -> compute dtype inside the jitted dot (exact for int8 and e4m3); f32
      # accumulation, the per-channel scale applied once to the f32 result.
      y = jnp.einsum(
        "...i,io->...o",
        x.astype(dt),
        self.kernel[...].astype(dt),
        preferred_element_type=jnp.float32,
      )
      y = (y * self.kernel_scale[...].astype(jnp.float32)).astype(dt)
      if self.bias is not None:
        y = y + self.bias[...].astype(dt)
    else:
      y = super().__call__(x)
    if self.lora_a is not None:
      dt = y.dtype
      h = x.astype(dt) @ self.lora_a[...].astype(dt)
      y = y + (h @ self.lora_b[...].astype(dt)) * jnp.asarray(self.lora_scale, dt)
    return y


def dense(
  in_dim: int,
  out_dim: int,
  axes: tuple[str | None, str | None],
  *,
  dtype,
  param_dtype,
  rngs: nnx.Rngs,
  zero: bool = False,
) -> Dense:
  """A `Dense` (kernel (in, out), bias (out,)) annotated with logical axes `axes`."""
  kernel_init = nnx.initializers.zeros if zero else torch_default_init
  return Dense(
    in_dim,
    out_dim,
    use_bias=True,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nnx.with_partitioning(kernel_init, axes),
    bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
    rngs=rngs,
  )


def dense_layers(module: nnx.Module) -> dict[str, Dense]:
  """Every `Dense` inside `module` by its dotted path (a stacked layer is one entry)."""
  return {
    ".".join(map(str, path)): node
    for path, node in nnx.iter_graph(module)
    if isinstance(node, Dense)
  }
