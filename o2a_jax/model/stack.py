"""Stacked blocks: created with a leading `layers` axis and run with `lax.scan` (or a loop).

A stack of n identical blocks holds every parameter as one (n, ...) array, so the whole stack
traces and compiles once; `run` scans a contiguous slice of it with an optional remat policy.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.checkpoint_dots,
  "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def create(n: int, make: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs) -> nnx.Module:
  """n blocks from `make(rngs)`, parameters stacked on a leading axis named `layers`."""

  @nnx.split_rngs(splits=n)
  @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
  def build(r):
    return make(r)

  return build(rngs)


def run(
  stack: nnx.Module,
  body: Callable,
  carry,
  lo: int,
  hi: int,
  *,
  xs=None,
  scan: bool = True,
  remat: str = "none",
):
  """Applies `body(block, carry, index, x) -> (carry, y)` for blocks lo..hi-1 of `stack`.

  `xs` is an optional pytree of extra per-step inputs with a leading (hi - lo) axis.
  Returns the final carry and the stacked ys (or None when body returns None).
  """
  graphdef, state = nnx.split(stack)

  def step(c, inputs):
    params, index, x = inputs
    return body(nnx.merge(graphdef, params), c, index, x)

  if remat != "none":
    step = jax.checkpoint(step, policy=_POLICIES[remat], prevent_cse=not scan)
  sliced = jax.tree.map(lambda a: a[lo:hi], state)
  indices = jax.numpy.arange(lo, hi)
  if scan:
    return jax.lax.scan(step, carry, (sliced, indices, xs))
  ys = []
  for j in range(hi - lo):
    x_j = None if xs is None else jax.tree.map(lambda a, j=j: a[j], xs)
    carry, y = step(carry, (jax.tree.map(lambda a, j=j: a[j], sliced), indices[j], x_j))
    ys.append(y)
  if all(y is None for y in ys):
    return carry, None
  return carry, jax.tree.map(lambda *a: jax.numpy.stack(a), *ys)
