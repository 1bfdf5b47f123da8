"""`cudnn`: RoPE in XLA, then cuDNN flash attention via `jax.nn.dot_product_attention`.

The H100 default (spec jax_stack §0): XLA fuses the rotation into the q/k producer, cuDNN does
the attention. cuDNN takes float16/bfloat16 only, so float32 inputs are refused rather than
silently downcast. Sequence lengths need no padding: cuDNN handles any length. The hybrid form
is two cuDNN calls (self, reference) whose outputs are summed in float32; the backward is
cuDNN's own (jax defines the custom_vjp), RoPE's transpose is XLA's autodiff.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kernels.attention import common
from kernels.attention.reference import apply_rope

_DTYPES = (jnp.bfloat16, jnp.float16)


def _check(q):
  if q.dtype not in _DTYPES:
    raise ValueError(
      f"impl='cudnn' needs bfloat16 or float16 inputs, got {q.dtype}; cast q/k/v or use impl='xla'"
    )


def _attn(q, k, v):
  return jax.nn.dot_product_attention(q, k, v, implementation="cudnn")


def attention(q, k, v, *, q_rope=None, k_rope=None):
  common.check_inputs(q, [(k, v, q_rope, k_rope)])
  _check(q)
  return _attn(apply_rope(q, q_rope), apply_rope(k, k_rope), v)


def hybrid_attention(q, k, v, k_ref, v_ref, *, q_rope, k_rope, q_ref_rope, k_ref_rope):
  common.check_inputs(q, [(k, v, q_rope, k_rope), (k_ref, v_ref, q_ref_rope, k_ref_rope)])
  _check(q)
  self_out = _attn(apply_rope(q, q_rope), apply_rope(k, k_rope), v)
  ref_out = _attn(apply_rope(q, q_ref_rope), apply_rope(k_ref, k_ref_rope), v_ref)
  return (self_out.astype(jnp.float32) + ref_out.astype(jnp.float32)).astype(q.dtype)
