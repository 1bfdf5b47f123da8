"""`pallas_gpu`: FlashAttention-2 style Pallas kernels with fused rotate-half RoPE, Triton lowering.

Portable: the same `pallas_call`s lower to Triton on NVIDIA (and AMD) GPUs and run in interpret
mode on the CPU, where the tests check them against the oracle.

Layout is the API's (B, L, N, K); a BlockSpec with `None` squeezes batch and head, so a program
sees (L, K) tiles. On Triton a BlockSpec is only a pointer offset, which is why the key/value
BlockSpecs can span the whole (padded) key sequence and the kernels walk it with `pl.ds`.

Forward (grid: q blocks x B x N): for each branch, rotate the q tile once (float32 math, cast
back), then loop over key blocks: rotate the k tile, `s = qa ka^T + qb kb^T` as two half-width
dots (Triton cannot slice or concatenate values, so halves come straight from refs), online
softmax in base 2, `acc += p v`. Branch outputs are normalised separately and summed; each
branch's base-2 LSE (and, for hybrids, its own output, for `delta`) is saved for the backward.

Backward: `delta = rowsum(o_b * do)` in XLA, then two kernels, as in FlashAttention-2:
- dK/dV (grid: key blocks x B x N, one call per branch) loops over q blocks;
- dQ (grid: q blocks x B x N, all branches fused) loops over key blocks.
Both recompute rotated tiles on load, accumulate gradients w.r.t. the rotated halves and apply
the transposed rotation before storing, so callers see gradients w.r.t. un-rotated q and k.

Padded keys are masked with an iota test against the static valid length (`cfg.kv_lens`).
Block sizes must be powers of two (Triton); lengths need not be multiples of anything.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels.attention import common
from kernels.attention.compat import dot, pl, triton_compiler_params

DEFAULT_CONFIG = common.Config(
  block_q=128, block_k=64, block_q_bwd=64, block_k_bwd=64, num_warps=8, num_stages=2
)


def _load_rotated(x_ref, c_ref, s_ref, rows, half, dtype):
  """Loads x[rows] as rotated halves (a, b), each (rows, K/2) in `dtype`."""
  a = x_ref[rows, :half].astype(jnp.float32)
  b = x_ref[rows, half:].astype(jnp.float32)
  a, b = common.rotate_halves(a, b, c_ref[rows, :], s_ref[rows, :])
  return a.astype(dtype), b.astype(dtype)


def _masked(s, start, kv_len, block_k):
  if kv_len % block_k == 0:
    return s
  valid = start + jnp.arange(block_k) < kv_len
  return jnp.where(valid[None, :], s, common.MASK_VALUE)


def _fwd_kernel(q_ref, *refs, nb, kv_lens, block_k, residuals):
  branch_refs = [refs[6 * i : 6 * i + 6] for i in range(nb)]
  o_ref, *res_refs = refs[6 * nb :]
  block_q, kd = q_ref.shape
  half = kd // 2
  dtype = q_ref.dtype
  scale2 = kd**-0.5 * common.LOG2E
  total = jnp.zeros((block_q, kd), jnp.float32)
  for i, (k_ref, v_ref, qc_ref, qs_ref, kc_ref, ks_ref) in enumerate(branch_refs):
    qa, qb = _load_rotated(q_ref, qc_ref, qs_ref, slice(None), half, dtype)

    # Default arguments bind this branch's refs (the loop is unrolled at trace time).
    def body(
      j,
      carry,
      k_ref=k_ref,
      v_ref=v_ref,
      kc_ref=kc_ref,
      ks_ref=ks_ref,
      qa=qa,
      qb=qb,
      kv_len=kv_lens[i],
    ):
      acc, m, lsum = carry
      rows = pl.ds(j * block_k, block_k)
      ka, kb = _load_rotated(k_ref, kc_ref, ks_ref, rows, half, dtype)
      s = (dot(qa, ka, tb=True) + dot(qb, kb, tb=True)) * scale2
      s = _masked(s, j * block_k, kv_len, block_k)
      m_new = jnp.maximum(m, jnp.max(s, axis=1))
      corr = jnp.exp2(m - m_new)
      p = jnp.exp2(s - m_new[:, None])
      lsum = lsum * corr + jnp.sum(p, axis=1)
      acc = acc * corr[:, None] + dot(p.astype(dtype), v_ref[rows, :])
      return acc, m_new, lsum

    init = (
      jnp.zeros((block_q, kd), jnp.float32),
      jnp.full((block_q,), -jnp.inf, jnp.float32),
      jnp.zeros((block_q,), jnp.float32),
    )
    acc, m, lsum = lax.fori_loop(0, k_ref.shape[0] // block_k, body, init)
    out = acc / lsum[:, None]
    total = total + out
    if residuals:
      if nb > 1:
        res_refs[i][...] = out.astype(dtype)
      res_refs[-nb + i][...] = m + jnp.log2(lsum)
  o_ref[...] = total.astype(o_ref.dtype)


def _params(cfg):
  return triton_compiler_params(cfg.num_warps, cfg.num_stages)


def _check_head_dim(kd):
  if (kd // 2) & (kd // 2 - 1):
    raise ValueError(f"impl='pallas_gpu' needs K/2 a power of two (Triton tiles), got K={kd}")


def forward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, residuals: bool):
  b, lq, n, kd = q.shape
  _check_head_dim(kd)
  nb, bq = len(ks), cfg.block_q
  grid = (lq // bq, b, n)
  q_spec = pl.BlockSpec((None, bq, None, kd), lambda i, j, h: (j, i, h, 0))
  qt_spec = pl.BlockSpec((bq, kd // 2), lambda i, j, h: (i, 0))
  in_specs, args = [q_spec], [q]
  for k, v, qc, qs, kc, ksn in zip(ks, vs, qcs, qss, kcs, kss):
    lk = k.shape[1]
    kv_spec = pl.BlockSpec((None, lk, None, kd), lambda i, j, h: (j, 0, h, 0))
    kt_spec = pl.BlockSpec((lk, kd // 2), lambda i, j, h: (0, 0))
    in_specs += [kv_spec, kv_spec, qt_spec, qt_spec, kt_spec, kt_spec]
    args += [k, v, qc, qs, kc, ksn]
  out_shape = [jax.ShapeDtypeStruct(q.shape, q.dtype)]
  out_specs = [q_spec]
  if residuals:
    if nb > 1:
      out_shape += [jax.ShapeDtypeStruct(q.shape, q.dtype)] * nb
      out_specs += [q_spec] * nb
    out_shape += [jax.ShapeDtypeStruct((b, n, lq), jnp.float32)] * nb
    out_specs += [pl.BlockSpec((None, None, bq), lambda i, j, h: (j, h, i))] * nb
  kernel = functools.partial(
    _fwd_kernel, nb=nb, kv_lens=cfg.kv_lens, block_k=cfg.block_k, residuals=residuals
  )
  res = pl.pallas_call(
    kernel,
    grid=grid,
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    compiler_params=_params(cfg),
    interpret=cfg.interpret,
    name="rope_flash_fwd",
  )(*args)
  if not residuals:
    return res[0], None, None
  outs = tuple(res[1 : 1 + nb]) if nb > 1 else (res[0],)
  return res[0], outs, tuple(res[-nb:])


def _dkv_kernel(
  q_ref, qc_ref, qs_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, kc_ref, ks_ref,
  dk_ref, dv_ref, *, kv_len, block_q,
):  # fmt: skip
  block_k, kd = k_ref.shape
  half, dtype = kd // 2, k_ref.dtype
  scale = kd**-0.5
  ka, kb = _load_rotated(k_ref, kc_ref, ks_ref, slice(None), half, dtype)
  v = v_ref[...]
  start_k = pl.program_id(0) * block_k

  def body(i, carry):
    dka, dkb, dv = carry
    rows = pl.ds(i * block_q, block_q)
    qa, qb = _load_rotated(q_ref, qc_ref, qs_ref, rows, half, dtype)
    s = (dot(qa, ka, tb=True) + dot(qb, kb, tb=True)) * (scale * common.LOG2E)
    s = _masked(s, start_k, kv_len, block_k)
    p = jnp.exp2(s - lse_ref[rows][:, None])
    do = do_ref[rows, :]
    dv = dv + dot(p.astype(dtype), do, ta=True)
    dp = dot(do, v, tb=True)
    ds = (p * (dp - delta_ref[rows][:, None])).astype(dtype)
    return dka + dot(ds, qa, ta=True), dkb + dot(ds, qb, ta=True), dv

  zeros = jnp.zeros((block_k, half), jnp.float32)
  init = (zeros, zeros, jnp.zeros((block_k, kd), jnp.float32))
  dka, dkb, dv = lax.fori_loop(0, q_ref.shape[0] // block_q, body, init)
  dka, dkb = common.unrotate_halves(dka * scale, dkb * scale, kc_ref[...], ks_ref[...])
  dk_ref[:, :half] = dka.astype(dk_ref.dtype)
  dk_ref[:, half:] = dkb.astype(dk_ref.dtype)
  dv_ref[...] = dv.astype(dv_ref.dtype)


def _dq_kernel(q_ref, do_ref, *refs, nb, kv_lens, block_k):
  branch_refs = [refs[8 * i : 8 * i + 8] for i in range(nb)]
  (dq_ref,) = refs[8 * nb :]
  block_q, kd = q_ref.shape
  half, dtype = kd // 2, q_ref.dtype
  scale = kd**-0.5
  do = do_ref[...]
  dqa = jnp.zeros((block_q, half), jnp.float32)
  dqb = jnp.zeros((block_q, half), jnp.float32)
  for i, (k_ref, v_ref, qc_ref, qs_ref, kc_ref, ks_ref, lse_ref, delta_ref) in enumerate(
    branch_refs
  ):
    qa, qb = _load_rotated(q_ref, qc_ref, qs_ref, slice(None), half, dtype)
    lse, delta = lse_ref[...], delta_ref[...]
    kv_len = kv_lens[i]

    def body(j, carry, k_ref=k_ref, v_ref=v_ref, kc_ref=kc_ref, ks_ref=ks_ref, kv_len=kv_len,
             qa=qa, qb=qb, lse=lse, delta=delta):  # fmt: skip
      ga, gb = carry
      rows = pl.ds(j * block_k, block_k)
      ka, kb = _load_rotated(k_ref, kc_ref, ks_ref, rows, half, dtype)
      s = (dot(qa, ka, tb=True) + dot(qb, kb, tb=True)) * (scale * common.LOG2E)
      s = _masked(s, j * block_k, kv_len, block_k)
      p = jnp.exp2(s - lse[:, None])
      dp = dot(do, v_ref[rows, :], tb=True)
      ds = (p * (dp - delta[:, None])).astype(dtype)
      return ga + dot(ds, ka), gb + dot(ds, kb)

    zeros = jnp.zeros((block_q, half), jnp.float32)
    ga, gb = lax.fori_loop(0, k_ref.shape[0] // block_k, body, (zeros, zeros))
    ga, gb = common.unrotate_halves(ga * scale, gb * scale, qc_ref[...], qs_ref[...])
    dqa, dqb = dqa + ga, dqb + gb
  dq_ref[:, :half] = dqa.astype(dq_ref.dtype)
  dq_ref[:, half:] = dqb.astype(dq_ref.dtype)


def deltas(outs, dout):
  """rowsum(o_b * do) per branch, (B, N, L) float32, the softmax-backward correction."""
  do = dout.astype(jnp.float32)
  return [jnp.einsum("BLNK,BLNK->BNL", o.astype(jnp.float32), do) for o in outs]


def backward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, outs, lses, dout):
  b, lq, n, kd = q.shape
  half = kd // 2
  bq, bk = cfg.bq_bwd, cfg.bk_bwd
  dout = dout.astype(q.dtype)
  dls = deltas(outs, dout)
  whole_q = pl.BlockSpec((None, lq, None, kd), lambda i, j, h: (j, 0, h, 0))
  whole_qt = pl.BlockSpec((lq, half), lambda i, j, h: (0, 0))
  whole_row = pl.BlockSpec((None, None, lq), lambda i, j, h: (j, h, 0))
  blk_k = pl.BlockSpec((None, bk, None, kd), lambda i, j, h: (j, i, h, 0))
  blk_kt = pl.BlockSpec((bk, half), lambda i, j, h: (i, 0))
  dks, dvs = [], []
  for i, (k, v) in enumerate(zip(ks, vs)):
    lk = k.shape[1]
    dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, kv_len=cfg.kv_lens[i], block_q=bq),
      grid=(lk // bk, b, n),
      in_specs=[whole_q, whole_qt, whole_qt, whole_q, whole_row, whole_row]
      + [blk_k, blk_k, blk_kt, blk_kt],
      out_specs=[blk_k, blk_k],
      out_shape=[jax.ShapeDtypeStruct(k.shape, k.dtype)] * 2,
      compiler_params=_params(cfg),
      interpret=cfg.interpret,
      name="rope_flash_dkv",
    )(q, qcs[i], qss[i], dout, lses[i], dls[i], k, v, kcs[i], kss[i])
    dks.append(dk)
    dvs.append(dv)

  blk_q = pl.BlockSpec((None, bq, None, kd), lambda i, j, h: (j, i, h, 0))
  blk_qt = pl.BlockSpec((bq, half), lambda i, j, h: (i, 0))
  blk_row = pl.BlockSpec((None, None, bq), lambda i, j, h: (j, h, i))
  in_specs, args = [blk_q, blk_q], [q, dout]
  for i, (k, v) in enumerate(zip(ks, vs)):
    lk = k.shape[1]
    whole_k = pl.BlockSpec((None, lk, None, kd), lambda i, j, h: (j, 0, h, 0))
    whole_kt = pl.BlockSpec((lk, half), lambda i, j, h: (0, 0))
    in_specs += [whole_k, whole_k, blk_qt, blk_qt, whole_kt, whole_kt, blk_row, blk_row]
    args += [k, v, qcs[i], qss[i], kcs[i], kss[i], lses[i], dls[i]]
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, nb=len(ks), kv_lens=cfg.kv_lens, block_k=bk),
    grid=(lq // bq, b, n),
    in_specs=in_specs,
    out_specs=blk_q,
    out_shape=jax.ShapeDtypeStruct(q.shape, q.dtype),
    compiler_params=_params(cfg),
    interpret=cfg.interpret,
    name="rope_flash_dq",
  )(*args)
  return dq, dks, dvs


multi_branch = common.make_multi_branch(forward, backward)


def config(
  block_q: int = 128, block_k: int = 64, block_q_bwd: int = 64, block_k_bwd: int = 64,
  interpret: bool | None = None, num_warps: int = 8, num_stages: int = 2,
) -> common.Config:  # fmt: skip
  """A kernel config; `interpret=None` picks interpret mode where the backend is the CPU."""
  for name, blk in (("block_q", block_q), ("block_k", block_k), ("block_q_bwd", block_q_bwd),
                    ("block_k_bwd", block_k_bwd)):  # fmt: skip
    if blk & (blk - 1):
      raise ValueError(f"pallas_gpu {name}={blk} must be a power of two (Triton block shapes)")
  if interpret is None:
    interpret = common.default_interpret()
  return common.Config(
    block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd,
    interpret=interpret, num_warps=num_warps, num_stages=num_stages,
  )  # fmt: skip


def _default_config(q) -> common.Config:
  del q
  return config()


attention, hybrid_attention = common.public_pair(multi_branch, _default_config)
