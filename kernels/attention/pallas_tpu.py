"""`pallas_tpu`: flash attention for TPU (Mosaic) with RoPE fused as lane rolls.

Layout: the kernels see (B, N, L, K) (transposed in XLA), so a block's last two dims are
(tokens, K=128 lanes), as Mosaic's (8, 128) tiling wants. Rotate-half RoPE with K/2 = 64 is a
half-width lane rotation: with full-width tables C = [c, c] and S = [-s, s],
`rot(x) = x C + roll(x, K/2) S` (the roll runs on the XLU, no lane slicing), and the transposed
rotation used on gradients is `g C - roll(g, K/2) S`.

Forward (splash/flash-style blocking): grid (B, N, q blocks, key blocks of all branches), the
last axis the reduction ("arbitrary"). Branches are laid end to end on that axis; each branch's
key BlockSpecs clamp their block index outside the branch's range, so Mosaic does not re-fetch
them there. Per branch, VMEM scratch holds the rotated q tile (rotated once, at the first key
step), the running max/sum (128 lanes wide, as upstream) and the f32 accumulator; the last key
step normalises every branch separately and writes their sum (the fused hybrid).

Backward: a dK/dV kernel per branch (grid: key blocks, reduction over q blocks) works in the
transposed orientation `s^T = k q^T`, so the LSE and delta rows (stored (1, L) lane-dense)
broadcast without a transpose and every dot is a plain or NT matmul; a dQ kernel fuses the
branches like the forward and transposes its LSE/delta rows once per q tile.

Padded keys are masked with a 2-D iota against the static valid length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from kernels.attention import common
from kernels.attention.compat import dot, pl, pltpu, tpu_compiler_params

LANES = 128


def _full_tables(cos, sin):
  """(L, K/2) tables -> full-width (C, S) = ([c, c], [-s, s]), (L, K) float32."""
  return jnp.concatenate([cos, cos], -1), jnp.concatenate([-sin, sin], -1)


def _rot(x, c, s):
  return x * c + pltpu.roll(x, x.shape[-1] // 2, 1) * s


def _unrot(g, c, s):
  return g * c - pltpu.roll(g, g.shape[-1] // 2, 1) * s


def _rows_to_cols(row):
  """(1, n) -> (n, LANES) lane-replicated column, via a 2-D transpose Mosaic supports."""
  return jnp.broadcast_to(row, (LANES, row.shape[1])).T


def _to_bnlk(x):
  return jnp.swapaxes(x, 1, 2)


def _clamp(j, off, n):
  return jnp.minimum(jnp.maximum(j - off, 0), n - 1)


def _fwd_kernel(q_ref, *refs, nb, offs, nks, kv_lens, residuals):
  n_out = 1 + (nb if residuals and nb > 1 else 0) + (nb if residuals else 0)
  in_refs, out_refs, scratch = refs[: 6 * nb], refs[6 * nb : 6 * nb + n_out], refs[6 * nb + n_out :]
  o_ref = out_refs[0]
  bq, kd = q_ref.shape
  scale = kd**-0.5
  j = pl.program_id(3)
  dtype = q_ref.dtype

  for b in range(nb):
    qc_ref, qs_ref, k_ref, v_ref, kc_ref, ks_ref = in_refs[6 * b : 6 * b + 6]
    qr_sc, m_sc, l_sc, acc_sc = scratch[4 * b : 4 * b + 4]
    bk = k_ref.shape[0]

    @pl.when(j == 0)
    def _init(qc_ref=qc_ref, qs_ref=qs_ref, qr_sc=qr_sc, m_sc=m_sc, l_sc=l_sc, acc_sc=acc_sc):
      qr_sc[...] = _rot(q_ref[...].astype(jnp.float32), qc_ref[...], qs_ref[...]).astype(dtype)
      m_sc[...] = jnp.full(m_sc.shape, -jnp.inf, jnp.float32)
      l_sc[...] = jnp.zeros(l_sc.shape, jnp.float32)
      acc_sc[...] = jnp.zeros(acc_sc.shape, jnp.float32)

    @pl.when((j >= offs[b]) & (j < offs[b] + nks[b]))
    def _step(
      k_ref=k_ref, v_ref=v_ref, kc_ref=kc_ref, ks_ref=ks_ref, qr_sc=qr_sc, m_sc=m_sc, l_sc=l_sc,
      acc_sc=acc_sc, bk=bk, off=offs[b], kv_len=kv_lens[b],
    ):  # fmt: skip
      kr = _rot(k_ref[...].astype(jnp.float32), kc_ref[...], ks_ref[...]).astype(dtype)
      s = dot(qr_sc[...], kr, tb=True) * scale
      if kv_len % bk:
        col = (j - off) * bk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(col < kv_len, s, common.MASK_VALUE)
      m_prev = m_sc[...]
      m_new = jnp.maximum(m_prev, jnp.max(s, axis=1, keepdims=True))  # (bq, LANES)
      corr = jnp.exp(m_prev - m_new)
      p = jnp.exp(s - m_new[:, :1])
      l_sc[...] = corr * l_sc[...] + jnp.sum(p, axis=1, keepdims=True)
      m_sc[...] = m_new
      acc_sc[...] = acc_sc[...] * corr[:, :1] + dot(p.astype(dtype), v_ref[...])

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    total = jnp.zeros((bq, kd), jnp.float32)
    for b in range(nb):
      _, m_sc, l_sc, acc_sc = scratch[4 * b : 4 * b + 4]
      out = acc_sc[...] / l_sc[...][:, :1]
      total = total + out
      if residuals:
        if nb > 1:
          out_refs[1 + b][...] = out.astype(dtype)
        lse = m_sc[...] + jnp.log(l_sc[...])  # (bq, LANES), lanes equal
        out_refs[-nb + b][...] = lse.T[:1, :]
    o_ref[...] = total.astype(o_ref.dtype)


def _layout(q, ks, vs, qcs, qss, kcs, kss):
  qt = [_full_tables(c, s) for c, s in zip(qcs, qss)]
  kt = [_full_tables(c, s) for c, s in zip(kcs, kss)]
  return _to_bnlk(q), [_to_bnlk(k) for k in ks], [_to_bnlk(v) for v in vs], qt, kt


def _params(n_parallel):
  return tpu_compiler_params(("parallel",) * n_parallel + ("arbitrary",))


def forward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, residuals: bool):
  b, lq, n, kd = q.shape
  nb, bq, bk = len(ks), cfg.block_q, cfg.block_k
  qh, khs, vhs, qts, kts = _layout(q, ks, vs, qcs, qss, kcs, kss)
  nks = tuple(k.shape[1] // bk for k in ks)
  offs = tuple(sum(nks[:i]) for i in range(nb))
  q_spec = pl.BlockSpec((None, None, bq, kd), lambda bi, h, i, j: (bi, h, i, 0))
  qt_spec = pl.BlockSpec((bq, kd), lambda bi, h, i, j: (i, 0))
  in_specs, args, scratch = [q_spec], [qh], []
  for br in range(nb):
    off, nk = offs[br], nks[br]
    kv_spec = pl.BlockSpec(
      (None, None, bk, kd), lambda bi, h, i, j, off=off, nk=nk: (bi, h, _clamp(j, off, nk), 0)
    )
    kt_spec = pl.BlockSpec((bk, kd), lambda bi, h, i, j, off=off, nk=nk: (_clamp(j, off, nk), 0))
    in_specs += [qt_spec, qt_spec, kv_spec, kv_spec, kt_spec, kt_spec]
    args += [*qts[br], khs[br], vhs[br], *kts[br]]
    scratch += [
      pltpu.VMEM((bq, kd), q.dtype),
      pltpu.VMEM((bq, LANES), jnp.float32),
      pltpu.VMEM((bq, LANES), jnp.float32),
      pltpu.VMEM((bq, kd), jnp.float32),
    ]
  out_shape = [jax.ShapeDtypeStruct(qh.shape, q.dtype)]
  out_specs = [q_spec]
  if residuals:
    if nb > 1:
      out_shape += [jax.ShapeDtypeStruct(qh.shape, q.dtype)] * nb
      out_specs += [q_spec] * nb
    out_shape += [jax.ShapeDtypeStruct((b, n, 1, lq), jnp.float32)] * nb
    out_specs += [pl.BlockSpec((None, None, 1, bq), lambda bi, h, i, j: (bi, h, 0, i))] * nb
  kernel = functools.partial(
    _fwd_kernel, nb=nb, offs=offs, nks=nks, kv_lens=cfg.kv_lens, residuals=residuals
  )
  res = pl.pallas_call(
    kernel,
    grid=(b, n, lq // bq, sum(nks)),
    in_specs=in_specs,
    out_specs=out_specs,
    out_shape=out_shape,
    scratch_shapes=scratch,
    compiler_params=_params(3),
    interpret=cfg.interpret,
    name="rope_flash_fwd_tpu",
  )(*args)
  out = _to_bnlk(res[0])
  if not residuals:
    return out, None, None
  outs = tuple(_to_bnlk(o) for o in res[1 : 1 + nb]) if nb > 1 else (out,)
  return out, outs, tuple(res[-nb:])


def _dkv_kernel(
  q_ref, qc_ref, qs_ref, do_ref, lse_ref, delta_ref, k_ref, v_ref, kc_ref, ks_ref,
  dk_ref, dv_ref, kr_sc, dk_sc, dv_sc, *, kv_len,
):  # fmt: skip
  bk, kd = k_ref.shape
  dtype, scale = k_ref.dtype, kd**-0.5
  jk, iq = pl.program_id(2), pl.program_id(3)

  @pl.when(iq == 0)
  def _init():
    kr_sc[...] = _rot(k_ref[...].astype(jnp.float32), kc_ref[...], ks_ref[...]).astype(dtype)
    dk_sc[...] = jnp.zeros(dk_sc.shape, jnp.float32)
    dv_sc[...] = jnp.zeros(dv_sc.shape, jnp.float32)

  qr = _rot(q_ref[...].astype(jnp.float32), qc_ref[...], qs_ref[...]).astype(dtype)
  st = dot(kr_sc[...], qr, tb=True) * scale  # (bk, bq)
  if kv_len % bk:
    row = jk * bk + lax.broadcasted_iota(jnp.int32, st.shape, 0)
    st = jnp.where(row < kv_len, st, common.MASK_VALUE)
  pt = jnp.exp(st - lse_ref[...])
  do = do_ref[...]
  dv_sc[...] += dot(pt.astype(dtype), do)
  dpt = dot(v_ref[...], do, tb=True)
  dst = (pt * (dpt - delta_ref[...])).astype(dtype)
  dk_sc[...] += dot(dst, qr)

  @pl.when(iq == pl.num_programs(3) - 1)
  def _finish():
    dk_ref[...] = _unrot(dk_sc[...] * scale, kc_ref[...], ks_ref[...]).astype(dk_ref.dtype)
    dv_ref[...] = dv_sc[...].astype(dv_ref.dtype)


def _dq_kernel(q_ref, do_ref, *refs, nb, offs, nks, kv_lens):
  in_refs, (dq_ref,), scratch = refs[: 8 * nb], refs[8 * nb : 8 * nb + 1], refs[8 * nb + 1 :]
  bq, kd = q_ref.shape
  dtype, scale = q_ref.dtype, kd**-0.5
  j = pl.program_id(3)
  for b in range(nb):
    qc_ref, qs_ref, lse_ref, delta_ref, k_ref, v_ref, kc_ref, ks_ref = in_refs[8 * b : 8 * b + 8]
    qr_sc, lse_sc, delta_sc, g_sc = scratch[4 * b : 4 * b + 4]
    bk = k_ref.shape[0]

    @pl.when(j == 0)
    def _init(
      qc_ref=qc_ref, qs_ref=qs_ref, lse_ref=lse_ref, delta_ref=delta_ref, qr_sc=qr_sc,
      lse_sc=lse_sc, delta_sc=delta_sc, g_sc=g_sc,
    ):  # fmt: skip
      qr_sc[...] = _rot(q_ref[...].astype(jnp.float32), qc_ref[...], qs_ref[...]).astype(dtype)
      lse_sc[...] = _rows_to_cols(lse_ref[...])
      delta_sc[...] = _rows_to_cols(delta_ref[...])
      g_sc[...] = jnp.zeros(g_sc.shape, jnp.float32)

    @pl.when((j >= offs[b]) & (j < offs[b] + nks[b]))
    def _step(
      k_ref=k_ref, v_ref=v_ref, kc_ref=kc_ref, ks_ref=ks_ref, qr_sc=qr_sc, lse_sc=lse_sc,
      delta_sc=delta_sc, g_sc=g_sc, bk=bk, off=offs[b], kv_len=kv_lens[b],
    ):  # fmt: skip
      kr = _rot(k_ref[...].astype(jnp.float32), kc_ref[...], ks_ref[...]).astype(dtype)
      s = dot(qr_sc[...], kr, tb=True) * scale
      if kv_len % bk:
        col = (j - off) * bk + lax.broadcasted_iota(jnp.int32, s.shape, 1)
        s = jnp.where(col < kv_len, s, common.MASK_VALUE)
      p = jnp.exp(s - lse_sc[...][:, :1])
      dp = dot(do_ref[...], v_ref[...], tb=True)
      ds = (p * (dp - delta_sc[...][:, :1])).astype(dtype)
      g_sc[...] += dot(ds, kr)

  @pl.when(j == pl.num_programs(3) - 1)
  def _finish():
    dq = jnp.zeros((bq, kd), jnp.float32)
    for b in range(nb):
      qc_ref, qs_ref = in_refs[8 * b : 8 * b + 2]
      dq = dq + _unrot(scratch[4 * b + 3][...] * scale, qc_ref[...], qs_ref[...])
    dq_ref[...] = dq.astype(dq_ref.dtype)


def backward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, outs, lses, dout):
  b, lq, n, kd = q.shape
  nb, bq, bk = len(ks), cfg.bq_bwd, cfg.bk_bwd
  dout = dout.astype(q.dtype)
  qh, khs, vhs, qts, kts = _layout(q, ks, vs, qcs, qss, kcs, kss)
  doh = _to_bnlk(dout)
  do32 = dout.astype(jnp.float32)
  deltas = [jnp.einsum("BLNK,BLNK->BNL", o.astype(jnp.float32), do32)[:, :, None] for o in outs]

  # dK/dV: grid (B, N, key blocks, q blocks); q-side blocks follow the last grid index.
  q_blk = pl.BlockSpec((None, None, bq, kd), lambda bi, h, jk, iq: (bi, h, iq, 0))
  qt_blk = pl.BlockSpec((bq, kd), lambda bi, h, jk, iq: (iq, 0))
  row_blk = pl.BlockSpec((None, None, 1, bq), lambda bi, h, jk, iq: (bi, h, 0, iq))
  k_blk = pl.BlockSpec((None, None, bk, kd), lambda bi, h, jk, iq: (bi, h, jk, 0))
  kt_blk = pl.BlockSpec((bk, kd), lambda bi, h, jk, iq: (jk, 0))
  dks, dvs = [], []
  for br in range(nb):
    lk = khs[br].shape[2]
    dk, dv = pl.pallas_call(
      functools.partial(_dkv_kernel, kv_len=cfg.kv_lens[br]),
      grid=(b, n, lk // bk, lq // bq),
      in_specs=[q_blk, qt_blk, qt_blk, q_blk, row_blk, row_blk, k_blk, k_blk, kt_blk, kt_blk],
      out_specs=[k_blk, k_blk],
      out_shape=[jax.ShapeDtypeStruct(khs[br].shape, q.dtype)] * 2,
      scratch_shapes=[
        pltpu.VMEM((bk, kd), q.dtype),
        pltpu.VMEM((bk, kd), jnp.float32),
        pltpu.VMEM((bk, kd), jnp.float32),
      ],
      compiler_params=_params(3),
      interpret=cfg.interpret,
      name="rope_flash_dkv_tpu",
    )(qh, *qts[br], doh, lses[br], deltas[br], khs[br], vhs[br], *kts[br])
    dks.append(_to_bnlk(dk))
    dvs.append(_to_bnlk(dv))

  # dQ: grid (B, N, q blocks, key blocks of all branches), fused like the forward.
  nks = tuple(k.shape[1] // bk for k in ks)
  offs = tuple(sum(nks[:i]) for i in range(nb))
  q_spec = pl.BlockSpec((None, None, bq, kd), lambda bi, h, i, j: (bi, h, i, 0))
  qt_spec = pl.BlockSpec((bq, kd), lambda bi, h, i, j: (i, 0))
  row_spec = pl.BlockSpec((None, None, 1, bq), lambda bi, h, i, j: (bi, h, 0, i))
  in_specs, args, scratch = [q_spec, q_spec], [qh, doh], []
  for br in range(nb):
    off, nk = offs[br], nks[br]
    kv_spec = pl.BlockSpec(
      (None, None, bk, kd), lambda bi, h, i, j, off=off, nk=nk: (bi, h, _clamp(j, off, nk), 0)
    )
    kt_spec = pl.BlockSpec((bk, kd), lambda bi, h, i, j, off=off, nk=nk: (_clamp(j, off, nk), 0))
    in_specs += [qt_spec, qt_spec, row_spec, row_spec, kv_spec, kv_spec, kt_spec, kt_spec]
    args += [*qts[br], lses[br], deltas[br], khs[br], vhs[br], *kts[br]]
    scratch += [
      pltpu.VMEM((bq, kd), q.dtype),
      pltpu.VMEM((bq, LANES), jnp.float32),
      pltpu.VMEM((bq, LANES), jnp.float32),
      pltpu.VMEM((bq, kd), jnp.float32),
    ]
  dq = pl.pallas_call(
    functools.partial(_dq_kernel, nb=nb, offs=offs, nks=nks, kv_lens=cfg.kv_lens),
    grid=(b, n, lq // bq, sum(nks)),
    in_specs=in_specs,
    out_specs=q_spec,
    out_shape=jax.ShapeDtypeStruct(qh.shape, q.dtype),
    scratch_shapes=scratch,
    compiler_params=_params(3),
    interpret=cfg.interpret,
    name="rope_flash_dq_tpu",
  )(*args)
  return _to_bnlk(dq), dks, dvs


multi_branch = common.make_multi_branch(forward, backward)


def config(
  block_q: int = 512, block_k: int = 512, block_q_bwd: int = 512, block_k_bwd: int = 512,
  interpret: bool | None = None,
) -> common.Config:  # fmt: skip
  """A kernel config; `interpret=None` picks (HLO) interpret mode where the backend is the CPU.

  On a TPU, blocks must be multiples of 128 (lane-dense LSE rows and (8, 128) tiling)."""
  if interpret is None:
    interpret = common.default_interpret()
  return common.Config(
    block_q=block_q, block_k=block_k, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd,
    interpret=interpret,
  )  # fmt: skip


def _default_config(q) -> common.Config:
  del q
  return config()


attention, hybrid_attention = common.public_pair(multi_branch, _default_config)
