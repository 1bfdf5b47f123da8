"""`pallas_mosaic`: Hopper (sm90) flash-attention forward in Pallas Mosaic GPU, FA3 style.

Structure follows jax's `pallas/ops/gpu/attention_mgpu.py` (FlashAttention-3): three
warpgroups per CTA, two compute warpgroups that each own `block_q` query rows and one TMA
producer warpgroup that streams K/V tiles through a ring of `max_concurrent_steps` SMEM slots
guarded by barriers; QK^T and PV are `wgmma`s with accumulators in registers, and the two compute
warpgroups ping-pong on a schedule barrier so that one's softmax overlaps the other's MMAs.

Changes against upstream:
- dtype-generic (upstream hard-codes float16 SMEM, which fails for bfloat16);
- RoPE on Q is fused: each compute warpgroup TMAs its un-rotated Q tile and the (cos, sin) rows
  into SMEM, rotates the two K/2 halves in registers (float32), folds in the softmax scale,
  writes the tile back and fences (`commit_smem`) before the first wgmma;
- K is rotated in XLA before the kernel: both compute warpgroups read every K slot, so an in-kernel
  rotation would need a fourth warpgroup or a cross-warpgroup barrier per slot (a design choice of
  the fused-RoPE kernel; RoPE is ~1% of attention time at these lengths);
- any key length: keys are padded to `block_kv` and the last tile masked with an iota; queries
  are padded to 2*block_q by the shared plumbing;
- base-2 LSE residuals in the same format as `pallas_gpu`, whose dK/dV and dQ kernels
  (Triton lowering, fused RoPE) provide the backward pass.

The hybrid form runs the kernel once per branch (self, reference) and sums the two separately
normalised outputs in float32; it is not fused into one pass here.

Float16/bfloat16 only: wgmma on float32 operands is TF32 and cannot meet float32 parity.
Mosaic GPU interpret mode cannot run wgmma kernels, so on CPU this file is checked by lowering
for `cuda` only (tests/kernels_lowering_test.py); numerics need an H100.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from jax import lax

from kernels.attention import common, compat, pallas_gpu
from kernels.attention.compat import pl

_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


@dataclasses.dataclass(frozen=True)
class MosaicConfig:
  block_q: int = 64  # rows per compute warpgroup; a CTA covers 2 * block_q
  block_kv: int = 128
  max_concurrent_steps: int = 2


def _branch_forward(q, k_rot, v, qc, qs, kv_len, mc: MosaicConfig, save_residuals: bool):
  plgpu = compat.mosaic_gpu()
  b, lq, n, kd = q.shape
  lk = k_rot.shape[1]
  half, dtype = kd // 2, q.dtype
  block_q, block_kv = mc.block_q, mc.block_kv
  kv_steps = lk // block_kv
  max_steps = min(mc.max_concurrent_steps, kv_steps)
  scale = kd**-0.5
  log2e = math.log2(math.e)
  wgmma_layout = plgpu.Layout.WGMMA

  def kernel(q_ref, k_ref, v_ref, qc_ref, qs_ref, out_ref, lse_ref, scoped):
    bi, head = lax.axis_index("batch"), lax.axis_index("heads")
    smem, buffer_barriers, consumed_barriers, schedule_barrier = scoped
    wg = lax.axis_index("wg")
    qo_smem2, k_smem, v_smem, t_smem2, lse_smem2 = smem
    k_barriers, v_barriers, q_barriers = buffer_barriers
    k_consumed, v_consumed = consumed_barriers

    def schedule():
      plgpu.barrier_arrive(schedule_barrier)
      plgpu.barrier_wait(schedule_barrier)

    @pl.when(wg < 2)
    def _compute_wg():
      plgpu.set_max_registers(232, action="increase")
      qo_smem, t_smem = qo_smem2.at[wg], t_smem2.at[wg]
      q_base = lax.axis_index("q_seq") * (2 * block_q) + wg * block_q
      rows = pl.ds(q_base, block_q)
      plgpu.copy_gmem_to_smem(q_ref.at[bi, rows, head], qo_smem, q_barriers.at[wg])
      plgpu.copy_gmem_to_smem(qc_ref.at[rows], t_smem, q_barriers.at[wg])
      plgpu.barrier_wait(q_barriers.at[wg])

      # Fused RoPE on the Q tile: rotate the halves in float32, fold in the softmax scale.
      # cos and sin share one SMEM buffer (the 224 KiB budget is tight at block_kv=128).
      load = lambda ref: plgpu.load(ref, (), layout=wgmma_layout)
      qa = load(qo_smem.at[:, pl.ds(0, half)]).astype(jnp.float32)
      qb = load(qo_smem.at[:, pl.ds(half, half)]).astype(jnp.float32)
      c = load(t_smem)
      plgpu.copy_gmem_to_smem(qs_ref.at[rows], t_smem, q_barriers.at[wg])
      plgpu.barrier_wait(q_barriers.at[wg])
      s = load(t_smem)
      ra, rb = common.rotate_halves(qa, qb, c, s)
      qo_smem.at[:, pl.ds(0, half)][...] = (ra * scale).astype(dtype)
      qo_smem.at[:, pl.ds(half, half)][...] = (rb * scale).astype(dtype)
      plgpu.commit_smem()  # make the register writes visible to the wgmma async proxy

      m_i = plgpu.layout_cast(jnp.full((block_q,), -jnp.inf, jnp.float32), wgmma_layout.reduce(1))
      l_i = plgpu.layout_cast(jnp.full((block_q,), 0, jnp.float32), wgmma_layout.reduce(1))
      acc = plgpu.layout_cast(jnp.full((block_q, kd), 0, jnp.float32), wgmma_layout)
      plgpu.barrier_wait(k_barriers.at[0])
      pl.when(wg == 1)(schedule)

      def kv_loop(step, carry):
        acc, m_i, l_i = carry
        slot = lax.rem(step, jnp.array(max_steps, step.dtype))

        def compute_qk(acc_ref):
          plgpu.wgmma(acc_ref, qo_smem, plgpu.transpose_ref(k_smem.at[slot], (1, 0)))
          schedule()
          return acc_ref[...]

        qk = pl.run_scoped(compute_qk, plgpu.ACC((block_q, block_kv), jnp.float32))
        plgpu.barrier_arrive(k_consumed.at[slot])
        if kv_len % block_kv:  # padded keys live in the last tile only
          ids = plgpu.broadcasted_iota(jnp.int32, qk.shape, 1, layout=wgmma_layout)
          qk = jnp.where(ids + step * block_kv < kv_len, qk, -jnp.inf)
        m_ij = jnp.maximum(m_i, qk.max(axis=1) * log2e)
        alpha = jnp.exp2(m_i - m_ij)
        p = jnp.exp2(qk * log2e - lax.broadcast_in_dim(m_ij, qk.shape, [0]))
        acc *= lax.broadcast_in_dim(alpha, acc.shape, [0])
        l_i = l_i * alpha + p.sum(axis=1)
        p16 = p.astype(dtype)
        acc, l_i, m_ij, p16 = lax.optimization_barrier((acc, l_i, m_ij, p16))
        plgpu.barrier_arrive(schedule_barrier)
        plgpu.barrier_wait(v_barriers.at[slot])
        plgpu.barrier_wait(schedule_barrier)

        def compute_pv(acc_ref):
          plgpu.wgmma(acc_ref, p16, v_smem.at[slot])
          nxt = step + 1

          @pl.when(nxt < kv_steps)
          def _wait():
            plgpu.barrier_wait(k_barriers.at[lax.rem(nxt, jnp.array(max_steps, step.dtype))])

        acc = pl.run_state(compute_pv)(plgpu.ACC.init(acc))
        plgpu.barrier_arrive(v_consumed.at[slot])
        return acc, m_ij, l_i

      acc, m_i, l_i = lax.fori_loop(0, kv_steps, kv_loop, (acc, m_i, l_i))
      pl.when(wg == 0)(schedule)
      acc /= lax.broadcast_in_dim(l_i, (block_q, kd), [0])
      qo_smem[...] = acc.astype(dtype)
      if lse_smem2 is not None:
        lse_smem2.at[wg][...] = m_i + jnp.log(l_i) * log2e
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(qo_smem, out_ref.at[bi, rows, head])
      if lse_smem2 is not None:
        plgpu.copy_smem_to_gmem(lse_smem2.at[wg], lse_ref.at[bi, head, rows])
      plgpu.wait_smem_to_gmem(0)

    @pl.when(wg == 2)
    def _memory_wg():
      plgpu.set_max_registers(40, action="decrease")
      for i in range(max_steps):
        sl = (bi, pl.ds(i * block_kv, block_kv), head)
        plgpu.copy_gmem_to_smem(k_ref.at[sl], k_smem.at[i], k_barriers.at[i])
        plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[i], v_barriers.at[i])

      @pl.loop(0, kv_steps - max_steps)
      def _kv_loop(step):
        tma_step = step + max_steps
        slot = lax.rem(step, jnp.array(max_steps, step.dtype))
        sl = (bi, pl.ds(tma_step * block_kv, block_kv), head)
        plgpu.barrier_wait(k_consumed.at[slot])
        plgpu.copy_gmem_to_smem(k_ref.at[sl], k_smem.at[slot], k_barriers.at[slot])
        plgpu.barrier_wait(v_consumed.at[slot])
        plgpu.copy_gmem_to_smem(v_ref.at[sl], v_smem.at[slot], v_barriers.at[slot])

  def entry(q_ref, k_ref, v_ref, qc_ref, qs_ref, out_ref, lse_ref):
    transforms = (plgpu.TilingTransform((8, 64)), plgpu.SwizzleTransform(128))
    scratch = [
      plgpu.SMEM((2, block_q, kd), dtype, transforms=transforms),
      plgpu.SMEM((max_steps, block_kv, kd), dtype, transforms=transforms),
      plgpu.SMEM((max_steps, block_kv, kd), dtype, transforms=transforms),
      # f32 rows: an (8, 32) tiling keeps 128-byte swizzled rows, so the WGMMA-layout loads
      # are bank-conflict free (unswizzled f32 tiles cannot be loaded in that layout).
      plgpu.SMEM(
        (2, block_q, half),
        jnp.float32,
        transforms=(plgpu.TilingTransform((8, 32)), plgpu.SwizzleTransform(128)),
      ),
      plgpu.SMEM((2, block_q), jnp.float32) if save_residuals else None,
    ]
    pl.run_scoped(
      lambda *a: kernel(q_ref, k_ref, v_ref, qc_ref, qs_ref, out_ref, lse_ref, a),
      scratch,
      (
        plgpu.Barrier(num_barriers=max_steps),
        plgpu.Barrier(num_barriers=max_steps),
        plgpu.Barrier(num_barriers=2),
      ),
      (plgpu.Barrier(num_arrivals=2, num_barriers=max_steps),) * 2,
      plgpu.Barrier(num_arrivals=2),
      collective_axes="wg",
    )

  out_shape = [jax.ShapeDtypeStruct(q.shape, dtype), None]
  if save_residuals:
    out_shape[1] = jax.ShapeDtypeStruct((b, n, lq), jnp.float32)
  out, lse = compat.mgpu_kernel(
    entry,
    out_shape=out_shape,
    grid=(n, lq // (2 * block_q), b),
    grid_names=("heads", "q_seq", "batch"),
    num_threads=3,
    thread_name="wg",
    compiler_params=plgpu.CompilerParams(approx_math=True),
  )(q, k_rot, v, qc, qs)
  return out, lse


_MOSAIC = MosaicConfig()


def _check_dtype(q):
  if q.dtype not in _DTYPES:
    raise ValueError(
      f"impl='pallas_mosaic' needs bfloat16 or float16 inputs, got {q.dtype} (wgmma on float32 is "
      "TF32); cast q/k/v or use impl='pallas_gpu'"
    )
  if q.shape[-1] != 128:
    # K=64: the K/2 halves are not aligned with the (8, 64) SMEM tiling; K=256: the Q, K/V ring
    # and table buffers exceed the 227 KiB of SMEM (both found by lowering for cuda).
    raise ValueError(
      f"impl='pallas_mosaic' supports head dim 128 only, got {q.shape[-1]}; use impl='pallas_gpu'"
    )


def forward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, residuals: bool):
  _check_dtype(q)
  if cfg.interpret:
    raise ValueError(
      "impl='pallas_mosaic' runs on NVIDIA Hopper GPUs only (Mosaic GPU interpret mode cannot "
      "run wgmma); on this host use impl='pallas_gpu', or lower with config(interpret=False)"
    )
  mc = dataclasses.replace(_MOSAIC, block_q=cfg.block_q // 2, block_kv=cfg.block_k)
  total, outs, lses = None, [], []
  for k, v, qc, qs, kc, ksn, kv_len in zip(ks, vs, qcs, qss, kcs, kss, cfg.kv_lens):
    o, lse = _branch_forward(q, common.rotate(k, kc, ksn), v, qc, qs, kv_len, mc, residuals)
    total = o.astype(jnp.float32) if total is None else total + o.astype(jnp.float32)
    outs.append(o)
    lses.append(lse)
  out = total.astype(q.dtype) if len(ks) > 1 else outs[0]
  return out, (tuple(outs) if residuals else None), (tuple(lses) if residuals else None)


def backward(q, ks, vs, qcs, qss, kcs, kss, cfg: common.Config, outs, lses, dout):
  """The Triton-lowered dK/dV and dQ kernels of `pallas_gpu` (same residual format)."""
  return pallas_gpu.backward(q, ks, vs, qcs, qss, kcs, kss, cfg, outs, lses, dout)


multi_branch = common.make_multi_branch(forward, backward)


def config(
  block_q: int = 64, block_kv: int = 128, block_q_bwd: int = 64, block_k_bwd: int = 64,
  interpret: bool | None = None,
) -> common.Config:  # fmt: skip
  """`block_q` rows per compute warpgroup (a CTA covers 2*block_q); multiples of 64.

  `interpret=None` means: interpret where the default backend is the CPU, which this kernel
  refuses; pass False to lower it for `cuda` from a CPU host."""
  for name, blk in (("block_q", block_q), ("block_kv", block_kv)):
    if blk % 64:
      raise ValueError(f"pallas_mosaic {name}={blk} must be a multiple of 64")
  if interpret is None:
    interpret = common.default_interpret()
  return common.Config(
    block_q=2 * block_q, block_k=block_kv, block_q_bwd=block_q_bwd, block_k_bwd=block_k_bwd,
    interpret=interpret,
  )  # fmt: skip


def _default_config(q) -> common.Config:
  del q
  return config()


attention, hybrid_attention = common.public_pair(multi_branch, _default_config)
