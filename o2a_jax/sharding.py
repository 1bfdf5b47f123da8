"""The device mesh, the one logical-axis rules table, and activation constraints.

Parameters and activations carry logical axis names; `RULES` maps them onto the fixed mesh
axes `MESH_AXES`. Layers never see a mesh: they name axes, and this module resolves the names
against whatever mesh is current (none on a single device, where `constrain` is a no-op).

Parameter names: `embed` (model width D), `heads` (N*K projections), `mlp` (F), `layers`
(stacked blocks), `conv` (small conv channels, never sharded).
Activation names: `act_batch`, `act_tokens`, `act_embed`, `act_heads`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
from flax import nnx
from jax.sharding import AxisType, PartitionSpec

MESH_AXES = ("data", "fsdp", "context", "tensor")

# FSDP over `fsdp`, tensor parallelism over `tensor`, sequence parallelism over `context`.
# Activations use their own names so that batch-over-fsdp never collides with embed-over-fsdp.
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
  ("embed", "fsdp"),
  ("heads", "tensor"),
  ("mlp", "tensor"),
  ("layers", None),
  ("conv", None),
  ("act_batch", ("data", "fsdp")),
  ("act_tokens", "context"),
  ("act_embed", None),
  ("act_heads", "tensor"),
)


def make_mesh(
  shape: Sequence[int], devices: Sequence[jax.Device] | None = None
) -> jax.sharding.Mesh:
  """A mesh over `MESH_AXES`; one entry of `shape` may be -1 to take the remaining devices.

  Auto axis types: `jax.make_mesh` now defaults to Explicit, which the DiT does not use.
  """
  devices = list(devices if devices is not None else jax.devices())
  shape = list(shape)
  if len(shape) != len(MESH_AXES):
    raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
  if shape.count(-1) > 1:
    raise ValueError(f"mesh shape {tuple(shape)} may contain at most one -1")
  known = math.prod(s for s in shape if s != -1)
  if -1 in shape:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices do not divide over mesh shape {tuple(shape)}")
    shape[shape.index(-1)] = len(devices) // known
  if math.prod(shape) != len(devices):
    raise ValueError(
      f"mesh shape {tuple(shape)} needs {math.prod(shape)} devices but {len(devices)} are given"
    )
  return jax.make_mesh(
    tuple(shape), MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES), devices=devices
  )


def logical_to_spec(names: Sequence[str | None], rules=RULES) -> PartitionSpec:
  """Resolves logical axis names to a PartitionSpec with the rules table."""
  table = dict(rules)
  return PartitionSpec(*(table.get(n) if n is not None else None for n in names))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """Sharding constraint by logical names; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names))


def axis_rules():
  """Context manager that makes NNX resolve parameter annotations with `RULES`."""
  return nnx.logical_axis_rules(RULES)


def place_variables(module: nnx.Module, variable_type, rules=RULES) -> None:
  """Puts `module`'s variables of `variable_type` on the current mesh by their logical axes
  (`out_sharding` metadata), in place; a no-op without a mesh. For variables added to a built
  model (LoRA adapters, int8 scales)."""
  if jax.sharding.get_abstract_mesh().empty:
    return
  mesh = jax.sharding.get_mesh()

  def put(v):
    spec = logical_to_spec(v.get_metadata().get("out_sharding") or (), rules)
    return jax.device_put(v.get_value(), jax.sharding.NamedSharding(mesh, spec))

  is_var = lambda x: isinstance(x, nnx.Variable)
  state = nnx.state(module, variable_type)
  nnx.update(module, jax.tree.map(put, state, is_leaf=is_var))
