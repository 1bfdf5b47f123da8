"""Plumbing shared by every backend: argument checks, padding, and the multi-branch custom_vjp.

Every backend computes *multi-branch* attention: one query tensor attends to one or more key/value
sets ("branches"), each with its own q and k RoPE tables and its own softmax, and the branch outputs
are summed. Plain attention is one branch; the hybrid reference attention of official main block
with hybrid reference attention is two (self, reference). A backend supplies

  forward(q, ks, vs, qcos, qsin, kcos, ksin, cfg, residuals) -> (out, branch_outs, lses)
  backward(q, ks, vs, qcos, qsin, kcos, ksin, cfg, branch_outs, lses, dout) -> (dq, dks, dvs)

on *padded* arrays (lengths multiples of the blocks), where `branch_outs`/`lses` may be None when
`residuals` is False. This module pads, fixes `cfg.kv_lens` (the valid key counts, so the
kernels mask padded keys), wires the custom_vjp and slices the padding off again. Padded query
rows need no mask: their output is dropped, so their cotangent is zero and they add nothing to
dK/dV.

RoPE tables are position constants: they get zero cotangents.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

Rope = tuple[jax.Array, jax.Array]
# A branch: (k, v, q_rope, k_rope).
Branch = tuple[jax.Array, jax.Array, Rope | None, Rope | None]

LOG2E = math.log2(math.e)
# Finite, so that a fully masked row can never produce inf - inf = nan.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


@dataclasses.dataclass(frozen=True)
class Config:
  """Static kernel configuration; hashable, so it is a nondiff custom_vjp argument."""

  block_q: int
  block_k: int
  kv_lens: tuple[int, ...] = ()
  interpret: bool = False
  # Backward blocks (0 means: same as forward).
  block_q_bwd: int = 0
  block_k_bwd: int = 0
  num_warps: int = 8
  num_stages: int = 2
  # Chunked (non-Pallas) backends only: shrink each branch's key block to the smallest multiple
  # of 8 that covers its keys in the same number of blocks (1,560 keys: 4 x 392, not 4 x 512),
  # so padding stays under 8 keys per block. Filled per branch into `k_blocks`.
  balance_k: bool = False
  k_blocks: tuple[int, ...] = ()

  @property
  def bq_bwd(self) -> int:
    return self.block_q_bwd or self.block_q

  @property
  def bk_bwd(self) -> int:
    return self.block_k_bwd or self.block_k


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


def default_interpret() -> bool:
  """Pallas kernels run in interpret mode where the default backend is the CPU."""
  return jax.default_backend() == "cpu"


def check_inputs(q: jax.Array, branches: Sequence[Branch], *, head_dim_multiple: int = 2):
  if q.ndim != 4:
    raise ValueError(f"q must be (B, L, N, K), got shape {q.shape}")
  b, lq, n, kd = q.shape
  if kd % head_dim_multiple:
    raise ValueError(f"head dim K={kd} must be a multiple of {head_dim_multiple} for this impl")
  for i, (k, v, q_rope, k_rope) in enumerate(branches):
    if k.ndim != 4 or k.shape[0] != b or k.shape[2:] != (n, kd) or v.shape != k.shape:
      raise ValueError(f"branch {i}: k {k.shape} / v {v.shape} do not fit q {q.shape}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
      raise ValueError(f"branch {i}: dtypes q {q.dtype}, k {k.dtype}, v {v.dtype} must agree")
    for name, rope, length in (("q_rope", q_rope, lq), ("k_rope", k_rope, k.shape[1])):
      if rope is None:
        continue
      cos, sin = rope
      if cos.shape != (length, kd // 2) or sin.shape != cos.shape:
        raise ValueError(
          f"branch {i}: {name} tables {cos.shape}/{sin.shape} must be (L, K/2) = "
          f"{(length, kd // 2)}"
        )


def _tables(rope: Rope | None, length: int, half: int) -> tuple[jax.Array, jax.Array]:
  if rope is None:  # identity rotation
    return jnp.ones((length, half), jnp.float32), jnp.zeros((length, half), jnp.float32)
  return rope[0].astype(jnp.float32), rope[1].astype(jnp.float32)


def _pad_axis(x: jax.Array, axis: int, to: int) -> jax.Array:
  if x.shape[axis] == to:
    return x
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, to - x.shape[axis])
  return jnp.pad(x, pad)


def make_multi_branch(forward: Callable, backward: Callable) -> Callable:
  """Builds `fn(q, branches, cfg) -> out` from a backend's padded forward/backward."""

  @functools.partial(jax.custom_vjp, nondiff_argnums=(7,))
  def core(q, ks, vs, qc, qs, kc, ksn, cfg):
    return forward(q, ks, vs, qc, qs, kc, ksn, cfg, False)[0]

  def core_fwd(q, ks, vs, qc, qs, kc, ksn, cfg):
    out, outs, lses = forward(q, ks, vs, qc, qs, kc, ksn, cfg, True)
    return out, (q, ks, vs, qc, qs, kc, ksn, outs, lses)

  def core_bwd(cfg, res, dout):
    q, ks, vs, qc, qs, kc, ksn, outs, lses = res
    dq, dks, dvs = backward(q, ks, vs, qc, qs, kc, ksn, cfg, outs, lses, dout)
    zeros = lambda ts: tuple(jnp.zeros_like(t) for t in ts)
    return dq, tuple(dks), tuple(dvs), zeros(qc), zeros(qs), zeros(kc), zeros(ksn)

  core.defvjp(core_fwd, core_bwd)

  def fn(q: jax.Array, branches: Sequence[Branch], cfg: Config) -> jax.Array:
    check_inputs(q, branches)
    lq, half = q.shape[1], q.shape[3] // 2
    lq_pad = round_up(lq, cfg.block_q)
    if cfg.bq_bwd != cfg.block_q:
      lq_pad = round_up(lq, math.lcm(cfg.block_q, cfg.bq_bwd))
    bk = math.lcm(cfg.block_k, cfg.bk_bwd)
    ks, vs, qc, qs, kc, ksn, kv_lens, k_blocks = [], [], [], [], [], [], [], []
    for k, v, q_rope, k_rope in branches:
      lk = k.shape[1]
      if cfg.balance_k:
        blk = min(round_up(-(-lk // -(-lk // cfg.block_k)), 8), cfg.block_k)
        k_blocks.append(blk)
        lk_pad = round_up(lk, blk)
      else:
        lk_pad = round_up(lk, bk)
      ks.append(_pad_axis(k, 1, lk_pad))
      vs.append(_pad_axis(v, 1, lk_pad))
      c, s = _tables(q_rope, lq, half)
      qc.append(_pad_axis(c, 0, lq_pad))
      qs.append(_pad_axis(s, 0, lq_pad))
      c, s = _tables(k_rope, lk, half)
      kc.append(_pad_axis(c, 0, lk_pad))
      ksn.append(_pad_axis(s, 0, lk_pad))
      kv_lens.append(lk)
    cfg = dataclasses.replace(cfg, kv_lens=tuple(kv_lens), k_blocks=tuple(k_blocks))
    out = core(_pad_axis(q, 1, lq_pad), *map(tuple, (ks, vs, qc, qs, kc, ksn)), cfg)
    return out[:, :lq]

  return fn


def public_pair(fn: Callable, default_cfg: Callable[[jax.Array], Config]):
  """(attention, hybrid_attention) with the public signatures, on top of a multi-branch fn."""

  def attention(q, k, v, *, q_rope=None, k_rope=None, cfg: Config | None = None):
    return fn(q, [(k, v, q_rope, k_rope)], cfg or default_cfg(q))

  def hybrid_attention(
    q, k, v, k_ref, v_ref, *, q_rope, k_rope, q_ref_rope, k_ref_rope, cfg: Config | None = None
  ):
    branches = [(k, v, q_rope, k_rope), (k_ref, v_ref, q_ref_rope, k_ref_rope)]
    return fn(q, branches, cfg or default_cfg(q))

  return attention, hybrid_attention


def rotate(x, cos, sin):
  """The one RoPE rotation: x (B, L, N, K) by (L, K/2) tables, rotate-half channel order
  `[re | im]`, float32 math, result in x.dtype."""
  h = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  a, b = rotate_halves(xf[..., :h], xf[..., h:], c, s)
  return jnp.concatenate([a, b], axis=-1).astype(x.dtype)


def rotate_halves(a, b, cos, sin):
  """Rotate-half RoPE on the two halves (float32): returns (a c - b s, b c + a s)."""
  return a * cos - b * sin, b * cos + a * sin


def unrotate_halves(ga, gb, cos, sin):
  """Transposed rotation, for gradients: returns (ga c + gb s, gb c - ga s)."""
  return ga * cos + gb * sin, gb * cos - ga * sin
