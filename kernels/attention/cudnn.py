"""`cudnn`: RoPE in XLA, then cuDNN flash attention via `jax.nn.dot_product_attention`.

The H100 default (the fastest measured there): XLA fuses the rotation into the q/k producer, cuDNN
does the attention. cuDNN takes float16/bfloat16 only, so float32 inputs are refused rather than
silently downcast. cuDNN's training graphs refuse odd sequence lengths ("Unsupported sequence
length", measured on an H200 with jax 0.11.2 at 1,999 / 389 tokens), so odd lengths are padded by
one token: the padded key is excluded with `key_value_seq_lengths` (lengths, never a boolean mask: a
mask makes cuDNN materialise it), the padded query row is sliced off. The hybrid form is two cuDNN
calls (self, reference) whose outputs are summed in float32; the backward is cuDNN's own (jax
defines the custom_vjp), RoPE's transpose is XLA's autodiff.
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


def _pad_even(x):
  """x (B, L, N, K) padded along L to an even length."""
  if x.shape[1] % 2 == 0:
    return x
  return jnp.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))


def _attn(q, k, v):
  lq, lk = q.shape[1], k.shape[1]
  kv_lens = None
  if lk % 2:  # the padded key must get no weight
    kv_lens = jnp.full((k.shape[0],), lk, jnp.int32)
  out = jax.nn.dot_product_attention(
    _pad_even(q), _pad_even(k), _pad_even(v), key_value_seq_lengths=kv_lens,
    implementation="cudnn",
  )  # fmt: skip
  return out[:, :lq]


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
