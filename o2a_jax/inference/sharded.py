"""Sharded sampling: parameters over the mesh, the token sequence over its `context` axis.

The denoiser names its parameter axes (`embed`, `heads`, `mlp`) and constrains its activations
(`act_batch`, `act_tokens`, `act_heads`) through `o2a_jax.sharding`; with a mesh current
(`jax.set_mesh`), `load_native` / `load_official` place the parameters by `sharding.RULES`
(heads and MLP over `tensor`, width over `fsdp`) and the activations follow. Attention kernels
are opaque to automatic partitioning, so the attention calls go through the context-parallel
wrappers of `kernels/attention/context_parallel.py` (Ulysses all-to-all or all-gathered K/V)
around the chosen kernel. They are registered as extra attention implementations named
`cp_<strategy>:<impl>` (`kernels.attention.context_parallel.register_context_parallel`), which
the model selects through its `attn_impl` config field like any other implementation.

Text cross-attention keys are not token-sharded (the prompt is short and its length need not
divide the context axis): there queries stay sharded and the text keys/values are replicated.

The batch of one sampling step is the guidance passes (1, 2 or 3), and the context-parallel
wrappers shard it over (`data`, `fsdp`), so those axes must divide it: sample on meshes of shape
(1, 1, context, tensor) (or with fsdp dividing the pass count).
"""

from __future__ import annotations

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from o2a_jax import sharding


def parse_mesh(text: str) -> tuple[int, ...]:
  """'1,1,4,2' -> (1, 1, 4, 2): the (data, fsdp, context, tensor) mesh shape."""
  try:
    shape = tuple(int(s) for s in text.split(","))
  except ValueError:
    shape = ()
  if len(shape) != len(sharding.MESH_AXES) or any(s < 1 and s != -1 for s in shape):
    raise ValueError(
      f"--mesh {text!r}: give {len(sharding.MESH_AXES)} comma-separated sizes for "
      f"{sharding.MESH_AXES}, e.g. 1,1,4,2 (one may be -1)"
    )
  return shape


def check_sampling_mesh(mesh, *, passes: int, num_heads: int, tokens_per_frame: int) -> None:
  """Clear errors for meshes the sampler cannot use (see the module docstring)."""
  dp = mesh.shape["data"] * mesh.shape["fsdp"]
  if passes % dp:
    raise ValueError(
      f"mesh data*fsdp = {dp} must divide the {passes} guidance passes of a step; use a mesh "
      "of shape (1, 1, context, tensor)"
    )
  tp, ctx = mesh.shape["tensor"], mesh.shape["context"]
  if num_heads % tp:
    raise ValueError(f"the model's {num_heads} heads do not divide over tensor = {tp}")
  if tokens_per_frame % ctx:
    raise ValueError(
      f"{tokens_per_frame} tokens per latent frame (H/16 * W/16) do not divide over "
      f"context = {ctx}; choose a size or a context axis that divides them"
    )


def replicate(module, mesh):
  """Places every array of an NNX module on all devices of `mesh` (e.g. the VAE), in place."""
  from flax import nnx

  state = nnx.state(module)
  rep = NamedSharding(mesh, P())
  nnx.update(module, jax.tree.map(lambda a: jax.device_put(a, rep), state))
  return module
