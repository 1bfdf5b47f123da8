"""`xla` implementation: the oracle's semantics, chunked over keys with an online softmax.

Plain jnp (no Pallas), so it runs everywhere. Keys are processed in chunks of at most `block_k` by a
`lax.scan`, so no (L, S) logits matrix is ever materialised: memory is O(B N L block_k), linear
in sequence length. The backward pass is a custom_vjp that rescans the key chunks with the saved
log-sum-exp (flash-attention style) instead of storing probabilities.

`reference.attention` / `reference.hybrid_attention` stay the plain, unchunked oracle the tests
compare every implementation with (`impl="reference"` in `_IMPLS`).

Numerics: q/k are rotated in float32 and cast back to the input dtype (as the oracle does),
logits and softmax statistics are float32, and the natural-log LSE is saved for the backward.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from kernels.attention import common

DEFAULT_CHUNK = 512


def _unrotate(g, cos, sin):
  h = g.shape[-1] // 2
  c, s = cos[None, :, None, :], sin[None, :, None, :]
  a, b = common.unrotate_halves(g[..., :h], g[..., h:], c, s)
  return jnp.concatenate([a, b], axis=-1)


def _chunks(x, c):
  """(B, S, ...) -> (S/c, B, c, ...), the scan layout."""
  b, s = x.shape[:2]
  return jnp.moveaxis(x.reshape(b, s // c, c, *x.shape[2:]), 1, 0)


def _table_chunks(t, c):
  return t.reshape(t.shape[0] // c, c, t.shape[1])


def _logits(qr, kr, j, c, kv_len):
  scale = qr.shape[-1] ** -0.5
  s = jnp.einsum("BLNK,BSNK->BNLS", qr, kr, preferred_element_type=jnp.float32) * scale
  if kv_len % c:  # only the last chunk holds padding; the mask is cheap enough to apply always
    valid = j * c + jnp.arange(c) < kv_len
    s = jnp.where(valid, s, common.MASK_VALUE)
  return s


def _branch_forward(q, k, v, qc, qs, kc, ks, kv_len, c):
  qr = common.rotate(q, qc, qs)
  b, lq, n, kd = q.shape

  def step(carry, xs):
    m, lsum, acc = carry
    j, kj, vj, kcj, ksj = xs
    s = _logits(qr, common.rotate(kj, kcj, ksj), j, c, kv_len)
    m_new = jnp.maximum(m, s.max(-1))
    corr = jnp.exp(m - m_new)
    p = jnp.exp(s - m_new[..., None])
    lsum = lsum * corr + p.sum(-1)
    pv = jnp.einsum("BNLS,BSNK->BNLK", p.astype(v.dtype), vj, preferred_element_type=jnp.float32)
    return (m_new, lsum, acc * corr[..., None] + pv), None

  n_chunks = k.shape[1] // c
  init = (
    jnp.full((b, n, lq), -jnp.inf, jnp.float32),
    jnp.zeros((b, n, lq), jnp.float32),
    jnp.zeros((b, n, lq, kd), jnp.float32),
  )
  xs = (
    jnp.arange(n_chunks),
    _chunks(k, c),
    _chunks(v, c),
    _table_chunks(kc, c),
    _table_chunks(ks, c),
  )
  (m, lsum, acc), _ = lax.scan(step, init, xs)
  out = jnp.swapaxes(acc / lsum[..., None], 1, 2)  # B L N K, float32
  return out, m + jnp.log(lsum)


def forward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, residuals: bool):
  total, outs, lses = None, [], []
  for k, v, qc, qs, kc, ksn, kv_len, c in zip(
    ks, vs, qcs, qss, kcs, kss, cfg.kv_lens, cfg.k_blocks
  ):
    o, lse = _branch_forward(q, k, v, qc, qs, kc, ksn, kv_len, c)
    total = o if total is None else total + o
    outs.append(o.astype(q.dtype))
    lses.append(lse)
  out = total.astype(q.dtype)
  return out, (tuple(outs) if residuals else None), (tuple(lses) if residuals else None)


def _branch_backward(q, k, v, qc, qs, kc, ks, kv_len, c, o, lse, do):
  qr = common.rotate(q, qc, qs)
  scale = q.shape[-1] ** -0.5
  delta = jnp.einsum("BLNK,BLNK->BNL", o.astype(jnp.float32), do.astype(jnp.float32))
  dt = q.dtype

  def step(dqr, xs):
    j, kj, vj, kcj, ksj = xs
    kr = common.rotate(kj, kcj, ksj)
    p = jnp.exp(_logits(qr, kr, j, c, kv_len) - lse[..., None])
    dv = jnp.einsum("BNLS,BLNK->BSNK", p.astype(dt), do, preferred_element_type=jnp.float32)
    dp = jnp.einsum("BLNK,BSNK->BNLS", do, vj, preferred_element_type=jnp.float32)
    ds = (p * (dp - delta[..., None])).astype(dt)
    dqr = dqr + jnp.einsum("BNLS,BSNK->BLNK", ds, kr, preferred_element_type=jnp.float32) * scale
    dkr = jnp.einsum("BNLS,BLNK->BSNK", ds, qr, preferred_element_type=jnp.float32) * scale
    return dqr, (_unrotate(dkr, kcj, ksj), dv)

  n_chunks = k.shape[1] // c
  xs = (
    jnp.arange(n_chunks),
    _chunks(k, c),
    _chunks(v, c),
    _table_chunks(kc, c),
    _table_chunks(ks, c),
  )
  dqr, (dk, dv) = lax.scan(step, jnp.zeros(q.shape, jnp.float32), xs)
  unchunk = lambda x: jnp.moveaxis(x, 0, 1).reshape(k.shape)
  return _unrotate(dqr, qc, qs), unchunk(dk), unchunk(dv)


def backward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, outs, lses, dout):
  dq, dks, dvs = jnp.zeros(q.shape, jnp.float32), [], []
  for i, kv_len in enumerate(cfg.kv_lens):
    dqb, dk, dv = _branch_backward(
      q,
      ks[i],
      vs[i],
      qcs[i],
      qss[i],
      kcs[i],
      kss[i],
      kv_len,
      cfg.k_blocks[i],
      outs[i],
      lses[i],
      dout,
    )
    dq = dq + dqb
    dks.append(dk.astype(q.dtype))
    dvs.append(dv.astype(q.dtype))
  return dq.astype(q.dtype), dks, dvs


multi_branch = common.make_multi_branch(forward, backward)


def default_config(q, chunk: int = DEFAULT_CHUNK) -> common.Config:
  del q
  return common.Config(block_q=1, block_k=chunk, balance_k=True)


def config(chunk: int = DEFAULT_CHUNK) -> common.Config:
  return common.Config(block_q=1, block_k=chunk, balance_k=True)


attention, hybrid_attention = common.public_pair(multi_branch, default_config)
