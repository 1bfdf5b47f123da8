"""Context (sequence) parallelism for the attention kernels: Ulysses and all-gather-K/V.

Both wrap any implementation of `_IMPLS` in `shard_map` over the mesh of `o2a_jax.sharding`
(axes data, fsdp, context, tensor), with the activation layout of its rules table: batch over
("data", "fsdp"), tokens over "context", heads over "tensor"; rope tables (L, K/2) are sharded
over "context" like their tokens. Kernels are opaque custom calls, so they must see per-device
shards explicitly rather than rely on automatic partitioning.

- `ulysses`: all-to-all trades the token sharding for a head sharding (heads split `context`
  ways, full sequences), runs full-sequence attention on N/(tensor*context) heads, and trades
  back. The rope tables are all-gathered (small). Needs (N / tensor) % context == 0.
- `allgather`: queries stay token-sharded; K, V *and the k rope tables* are all-gathered along
  "context", so positions stay attached to their keys. Simple; K/V traffic is small next to
  the attention compute at these lengths.

Both are exact (no change in numerics beyond the implementation's), and differentiable: the
collectives transpose to their duals and the kernels keep their custom_vjp.
"""

from __future__ import annotations

import functools

import jax
from jax import lax
from jax.sharding import PartitionSpec as P

from kernels.attention import _lookup, compat, register, registered

BATCH_AXES = ("data", "fsdp")
SEQ_AXIS = "context"
HEAD_AXIS = "tensor"
STRATEGIES = ("ulysses", "allgather")

_X = P(BATCH_AXES, SEQ_AXIS, HEAD_AXIS, None)
_T = P(SEQ_AXIS, None)


def _mesh(mesh):
  mesh = mesh if mesh is not None else jax.sharding.get_abstract_mesh()
  if mesh is None or mesh.empty:
    raise ValueError("context-parallel attention needs a mesh: pass mesh= or use jax.set_mesh")
  missing = {*BATCH_AXES, SEQ_AXIS, HEAD_AXIS} - set(mesh.axis_names)
  if missing:
    raise ValueError(f"mesh axes {mesh.axis_names} lack {sorted(missing)}; build it with "
                     "o2a_jax.sharding.make_mesh")  # fmt: skip
  return mesh


def _check(mesh, strategy, q, lengths):
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown context-parallel strategy {strategy!r}; choose one of {STRATEGIES}")
  cp, tp = mesh.shape[SEQ_AXIS], mesh.shape[HEAD_AXIS]
  dp = mesh.shape[BATCH_AXES[0]] * mesh.shape[BATCH_AXES[1]]
  n = q.shape[2]
  if q.shape[0] % dp or n % tp:
    raise ValueError(
      f"batch {q.shape[0]} / heads {n} must divide over data*fsdp={dp} / tensor={tp}"
    )
  for length in lengths:
    if length % cp:
      raise ValueError(f"token count {length} must be a multiple of the context axis size {cp}")
  if strategy == "ulysses" and (n // tp) % cp:
    raise ValueError(
      f"ulysses needs heads per tensor shard ({n // tp}) divisible by context={cp}; "
      "use strategy='allgather' or another mesh"
    )


def _heads_to_seq(x):
  return lax.all_to_all(x, SEQ_AXIS, split_axis=2, concat_axis=1, tiled=True)


def _seq_to_heads(x):
  return lax.all_to_all(x, SEQ_AXIS, split_axis=1, concat_axis=2, tiled=True)


def _gather(x, axis):
  return lax.all_gather(x, SEQ_AXIS, axis=axis, tiled=True)


def _gather_rope(rope):
  return None if rope is None else tuple(_gather(t, 0) for t in rope)


def _rope_spec(rope):
  return None if rope is None else (_T, _T)


def attention(q, k, v, *, q_rope=None, k_rope=None, impl="xla", strategy="ulysses", mesh=None):
  """`kernels.attention` over a mesh, tokens sharded over "context" (see module docstring)."""
  mesh = _mesh(mesh)
  _check(mesh, strategy, q, (q.shape[1], k.shape[1]))
  fn = _lookup(impl)[0]

  def local(q, k, v, q_rope, k_rope):
    if strategy == "ulysses":
      q, k, v = _heads_to_seq(q), _heads_to_seq(k), _heads_to_seq(v)
      out = fn(q, k, v, q_rope=_gather_rope(q_rope), k_rope=_gather_rope(k_rope))
      return _seq_to_heads(out)
    return fn(q, _gather(k, 1), _gather(v, 1), q_rope=q_rope, k_rope=_gather_rope(k_rope))

  in_specs = (_X, _X, _X, _rope_spec(q_rope), _rope_spec(k_rope))
  return compat.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=_X)(
    q, k, v, q_rope, k_rope
  )


def hybrid_attention(
  q, k, v, k_ref, v_ref, *, q_rope, k_rope, q_ref_rope, k_ref_rope, impl="xla",
  strategy="ulysses", mesh=None,
):  # fmt: skip
  """`kernels.hybrid_attention` over a mesh; reference tokens are sharded over "context" too."""
  mesh = _mesh(mesh)
  _check(mesh, strategy, q, (q.shape[1], k.shape[1], k_ref.shape[1]))
  fn = _lookup(impl)[1]

  def local(q, k, v, k_ref, v_ref, q_rope, k_rope, q_ref_rope, k_ref_rope):
    if strategy == "ulysses":
      q, k, v, k_ref, v_ref = map(_heads_to_seq, (q, k, v, k_ref, v_ref))
      q_rope, q_ref_rope = _gather_rope(q_rope), _gather_rope(q_ref_rope)
    else:
      k, v, k_ref, v_ref = (_gather(x, 1) for x in (k, v, k_ref, v_ref))
    out = fn(
      q, k, v, k_ref, v_ref, q_rope=q_rope, k_rope=_gather_rope(k_rope),
      q_ref_rope=q_ref_rope, k_ref_rope=_gather_rope(k_ref_rope),
    )  # fmt: skip
    return _seq_to_heads(out) if strategy == "ulysses" else out

  in_specs = (_X,) * 5 + ((_T, _T),) * 4
  return compat.shard_map(local, mesh=mesh, in_specs=in_specs, out_specs=_X)(
    q, k, v, k_ref, v_ref, q_rope, k_rope, q_ref_rope, k_ref_rope
  )


# --- registration as attention implementations `cp_<strategy>:<impl>` -------------------

PREFIX = "cp_"


def _cross_attention(q, k, v, *, impl, mesh=None):
  """Queries token-sharded, keys/values replicated over `context` (text cross-attention)."""
  mesh = _mesh(mesh)
  x = P(BATCH_AXES, SEQ_AXIS, HEAD_AXIS, None)
  kv = P(BATCH_AXES, None, HEAD_AXIS, None)
  fn = _lookup(impl)[0]
  return compat.shard_map(
    lambda q, k, v: fn(q, k, v, q_rope=None, k_rope=None),
    mesh=mesh,
    in_specs=(x, kv, kv),
    out_specs=x,
  )(q, k, v)


def _attention(q, k, v, *, q_rope=None, k_rope=None, impl, strategy):
  if q_rope is None and k_rope is None:
    return _cross_attention(q, k, v, impl=impl)
  return attention(q, k, v, q_rope=q_rope, k_rope=k_rope, impl=impl, strategy=strategy)


def _hybrid(q, k, v, k_ref, v_ref, *, q_rope, k_rope, q_ref_rope, k_ref_rope, impl, strategy):
  return hybrid_attention(
    q,
    k,
    v,
    k_ref,
    v_ref,
    q_rope=q_rope,
    k_rope=k_rope,
    q_ref_rope=q_ref_rope,
    k_ref_rope=k_ref_rope,
    impl=impl,
    strategy=strategy,
  )


def register_context_parallel(impl: str = "xla", strategy: str = "allgather") -> str:
  """Registers `cp_<strategy>:<impl>` as an attention implementation; returns its name.

  Use the name as the model's `attn_impl` (e.g. `load_native(path, attn_impl=name)` under
  `jax.set_mesh(mesh)`). Idempotent.
  """
  if strategy not in STRATEGIES:
    raise ValueError(f"unknown context-parallel strategy {strategy!r}; choose one of {STRATEGIES}")
  if impl.startswith(PREFIX):
    raise ValueError(f"attention impl {impl!r} is already context-parallel")
  _lookup(impl)  # a clear error for an unknown base implementation
  name = f"{PREFIX}{strategy}:{impl}"
  if name not in registered():
    register(
      name,
      functools.partial(_attention, impl=impl, strategy=strategy),
      functools.partial(_hybrid, impl=impl, strategy=strategy),
    )
  return name
