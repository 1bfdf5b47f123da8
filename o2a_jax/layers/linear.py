"""Dense layers with logical sharding annotations and the official init choices."""

from __future__ import annotations

from flax import nnx

# PyTorch's nn.Linear default init is kaiming-uniform(a=sqrt(5)), i.e. U(+-1/sqrt(fan_in)):
# variance 1/(3 fan_in). Used for layers trained from scratch (HRFA projections, pose blocks).
torch_default_init = nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def dense(
  in_dim: int,
  out_dim: int,
  axes: tuple[str | None, str | None],
  *,
  dtype,
  param_dtype,
  rngs: nnx.Rngs,
  zero: bool = False,
) -> nnx.Linear:
  """nnx.Linear (kernel (in, out), bias (out,)) annotated with logical axes `axes`."""
  kernel_init = nnx.initializers.zeros if zero else torch_default_init
  return nnx.Linear(
    in_dim,
    out_dim,
    use_bias=True,
    dtype=dtype,
    param_dtype=param_dtype,
    kernel_init=nnx.with_partitioning(kernel_init, axes),
    bias_init=nnx.with_partitioning(nnx.initializers.zeros, (axes[1],)),
    rngs=rngs,
  )
