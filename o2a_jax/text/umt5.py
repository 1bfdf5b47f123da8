"""The UMT5 encoder (the UMT5-XXL text encoder of Wan2.1) in Flax NNX.

T5 v1.1 blocks: pre-norm RMSNorm without mean or bias, self-attention without biases and without
1/sqrt(K) scaling, gated-GELU (tanh) feed-forward, and, unlike T5, a separate relative-position bias
table in every layer (UMT5). Layers are stacked along a leading `layers` axis and run in a
`fori_loop` (a scan).

Numerics: matmuls in the compute `dtype`, parameters in `param_dtype`, norms and the residual
stream in float32 (transformers keeps `wo` in float32 for this model family, which makes its
residual stream float32 after the first feed-forward), softmax in float32. The output is cast to
`dtype`, as the reference casts the final norm to the weights' dtype.

Dims: B batch, L tokens (as queries), S tokens (as keys; the same sequence), D width, N heads,
K head dim, M MLP hidden, V vocabulary, R relative-position buckets.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from o2a_jax import sharding
from o2a_jax.dims import dims

# Gated activations; transformers maps "gated-gelu" to the tanh approximation ("gelu_new").
_ACTIVATIONS = {
  "gelu": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
  "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
  "relu": jax.nn.relu,
  "silu": jax.nn.silu,
}

# Logical axis names of every parameter (leading `layers` for the stacked ones). The vocabulary
# axis stays unnamed: NNX passes names missing from the rules through as mesh axes, and sharding
# the 256k rows is not needed (the table is gathered, not multiplied).
LOGICAL_AXES = {
  "embedding": (None, "embed"),
  "final_norm": ("embed",),
  "layers.attn_norm": ("layers", "embed"),
  "layers.q": ("layers", "embed", "heads"),
  "layers.k": ("layers", "embed", "heads"),
  "layers.v": ("layers", "embed", "heads"),
  "layers.o": ("layers", "heads", "embed"),
  "layers.rel_bias": ("layers", None, None),  # (R, N): tiny, replicated
  "layers.ffn_norm": ("layers", "embed"),
  "layers.wi_0": ("layers", "embed", "mlp"),
  "layers.wi_1": ("layers", "embed", "mlp"),
  "layers.wo": ("layers", "mlp", "embed"),
}


@dataclasses.dataclass(frozen=True)
class UMT5Config:
  """UMT5 encoder architecture; the defaults are UMT5-XXL as shipped with Wan2.1."""

  vocab_size: int = 256384
  dim: int = 4096  # D (d_model)
  num_heads: int = 64  # N
  head_dim: int = 64  # K (d_kv)
  ffn_dim: int = 10240  # F (d_ff)
  num_layers: int = 24
  num_buckets: int = 32  # relative_attention_num_buckets
  max_distance: int = 128  # relative_attention_max_distance
  eps: float = 1e-6  # layer_norm_epsilon
  activation: str = "gelu_new"  # of the gated feed-forward

  def __post_init__(self):
    for name in ("vocab_size", "dim", "num_heads", "head_dim", "ffn_dim", "num_layers"):
      if getattr(self, name) < 1:
        raise ValueError(f"UMT5Config.{name} must be positive, got {getattr(self, name)}")
    if self.num_buckets < 4 or self.max_distance < self.num_buckets // 4:
      raise ValueError(
        f"relative attention needs num_buckets >= 4 and max_distance >= num_buckets / 4, got "
        f"{self.num_buckets} and {self.max_distance}"
      )
    if self.activation not in _ACTIVATIONS:
      raise ValueError(
        f"unsupported feed-forward activation {self.activation!r}; one of {sorted(_ACTIVATIONS)}"
      )

  def param_count(self) -> int:
    d, h, f = self.dim, self.num_heads * self.head_dim, self.ffn_dim
    per_layer = 4 * d * h + self.num_buckets * self.num_heads + 3 * d * f + 2 * d
    return self.vocab_size * d + self.num_layers * per_layer + d


UMT5_XXL = UMT5Config()


def relative_position_buckets(
  query_len: int, key_len: int, num_buckets: int, max_distance: int
) -> np.ndarray:
  """(S, L) int32 bucket of each (query, key) pair, bidirectional (the encoder's rule).

  Mirrors transformers' `_relative_position_bucket` with `is_decoder=False`, including its float32
  log and truncation toward zero, so that bucket boundaries agree exactly.
  """
  rel = np.arange(key_len)[None, :] - np.arange(query_len)[:, None]  # key - query
  half = num_buckets // 2
  buckets = (rel > 0).astype(np.int64) * half
  rel = np.abs(rel)
  max_exact = half // 2
  with np.errstate(divide="ignore"):  # log(0) for the exact buckets, which `where` discards
    log_ratio = np.log(rel.astype(np.float32) / np.float32(max_exact)) / np.float32(
      math.log(max_distance / max_exact)
    )
    large = max_exact + np.nan_to_num(log_ratio * np.float32(half - max_exact), neginf=0).astype(
      np.int64
    )
  large = np.minimum(large, half - 1)
  return (buckets + np.where(rel < max_exact, rel, large)).astype(np.int32)


def rms_norm_f32(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  """T5 LayerNorm: no mean subtraction, no bias; computed and returned in float32."""
  x = x.astype(jnp.float32)
  var = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)


def _param(rngs: nnx.Rngs, name: str, shape, dtype, std: float | None) -> nnx.Param:
  if std is None:
    value = jnp.ones(shape, dtype)
  else:
    value = (std * jax.random.normal(rngs.params(), shape, jnp.float32)).astype(dtype)
  return nnx.Param(value, out_sharding=LOGICAL_AXES[name])


class UMT5Layers(nnx.Module):
  """All encoder blocks, parameters stacked along a leading `layers` axis."""

  def __init__(self, cfg: UMT5Config, *, param_dtype, rngs: nnx.Rngs):
    n, d, h, f = cfg.num_layers, cfg.dim, cfg.num_heads * cfg.head_dim, cfg.ffn_dim
    f32 = jnp.float32
    # Initialisers follow transformers' Mesh-TensorFlow scheme (only matters for random weights).
    self.attn_norm = _param(rngs, "layers.attn_norm", (n, d), f32, None)
    self.q = _param(rngs, "layers.q", (n, d, h), param_dtype, (d * cfg.head_dim) ** -0.5)
    self.k = _param(rngs, "layers.k", (n, d, h), param_dtype, d**-0.5)
    self.v = _param(rngs, "layers.v", (n, d, h), param_dtype, d**-0.5)
    self.o = _param(rngs, "layers.o", (n, h, d), param_dtype, h**-0.5)
    self.rel_bias = _param(
      rngs, "layers.rel_bias", (n, cfg.num_buckets, cfg.num_heads), f32, d**-0.5
    )
    self.ffn_norm = _param(rngs, "layers.ffn_norm", (n, d), f32, None)
    self.wi_0 = _param(rngs, "layers.wi_0", (n, d, f), param_dtype, d**-0.5)
    self.wi_1 = _param(rngs, "layers.wi_1", (n, d, f), param_dtype, d**-0.5)
    self.wo = _param(rngs, "layers.wo", (n, f, d), param_dtype, f**-0.5)


class UMT5Encoder(nnx.Module):
  """UMT5 encoder stack: `encoder(input_ids, attention_mask)` -> last hidden state (B,S,D)."""

  def __init__(self, cfg: UMT5Config, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
    self.cfg = cfg
    self.dtype = jnp.dtype(dtype)
    param_dtype = self.dtype if param_dtype is None else jnp.dtype(param_dtype)
    self.embedding = _param(rngs, "embedding", (cfg.vocab_size, cfg.dim), param_dtype, 1.0)
    self.layers = UMT5Layers(cfg, param_dtype=param_dtype, rngs=rngs)
    self.final_norm = _param(rngs, "final_norm", (cfg.dim,), jnp.float32, None)
    # Identifies the weights for embedding caches; set by the loader, "" for random weights.
    self.checkpoint_id = ""

  @dims(input_ids="B L", attention_mask="B L", returns="B L D")
  def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
    """input_ids (B,S) int, attention_mask (B,S) 0/1 or None (all real) -> (B,S,D) in `dtype`.

    Rows of padded positions are computed as in the reference (not zeroed); padded keys are
    excluded from every softmax.
    """
    cfg, dt = self.cfg, self.dtype
    input_ids = jnp.asarray(input_ids)
    if input_ids.ndim != 2:
      raise ValueError(f"input_ids must be (B,S), got shape {input_ids.shape}")
    b, s = input_ids.shape
    if attention_mask is None:
      keep = jnp.ones((b, s), bool)
    else:
      attention_mask = jnp.asarray(attention_mask)
      if attention_mask.shape != (b, s):
        raise ValueError(f"attention_mask shape {attention_mask.shape} != input_ids {(b, s)}")
      keep = attention_mask > 0
    keep = keep[:, None, None, :]  # B 1 1 S (keys)

    x = jnp.take(self.embedding[...], input_ids, axis=0).astype(jnp.float32)  # B S D
    x = sharding.constrain(x, ("act_batch", "act_tokens", "act_embed"))
    buckets = jnp.asarray(relative_position_buckets(s, s, cfg.num_buckets, cfg.max_distance))
    neg = jnp.finfo(jnp.float32).min  # as the reference: fully masked rows become uniform
    act = _ACTIVATIONS[cfg.activation]
    nh, hd = cfg.num_heads, cfg.head_dim
    lay = self.layers
    stacked = {
      name: getattr(lay, name)[...]
      for name in ("attn_norm", "q", "k", "v", "o", "rel_bias", "ffn_norm", "wi_0", "wi_1", "wo")
    }

    def block(i, x):
      # The barrier over the whole stack (with the carry, so it stays in the loop) keeps each
      # layer's weight conversion inside the loop: otherwise XLA:CPU converts every stacked
      # weight to float32 before the loop (bf16 dots are computed in f32 there), 18 GB for XXL.
      x, params = jax.lax.optimization_barrier((x, stacked))
      p = {k: jax.lax.dynamic_index_in_dim(v, i, keepdims=False) for k, v in params.items()}
      h = rms_norm_f32(x, p["attn_norm"], cfg.eps).astype(dt)
      heads = lambda w: w.astype(dt).reshape(w.shape[0], nh, hd)  # D (N K) -> D N K
      q = jnp.einsum("BLD,DNK->BLNK", h, heads(p["q"]))
      k = jnp.einsum("BSD,DNK->BSNK", h, heads(p["k"]))
      v = jnp.einsum("BSD,DNK->BSNK", h, heads(p["v"]))
      # UMT5 does not scale q.k by 1/sqrt(K): the scale is folded into the weights.
      logits = jnp.einsum("BLNK,BSNK->BNLS", q, k, preferred_element_type=jnp.float32)
      bias = jnp.take(p["rel_bias"].astype(jnp.float32), buckets, axis=0)  # L S N
      logits = logits + jnp.transpose(bias, (2, 0, 1))[None]
      probs = jax.nn.softmax(jnp.where(keep, logits, neg), axis=-1).astype(dt)
      a = jnp.einsum("BNLS,BSNK->BLNK", probs, v)
      o = p["o"].astype(dt).reshape(nh, hd, -1)  # (N K) D -> N K D
      x = x + jnp.einsum("BLNK,NKD->BLD", a, o).astype(jnp.float32)
      x = sharding.constrain(x, ("act_batch", "act_tokens", "act_embed"))

      h = rms_norm_f32(x, p["ffn_norm"], cfg.eps).astype(dt)
      g = act(jnp.einsum("BLD,DM->BLM", h, p["wi_0"].astype(dt)))
      u = jnp.einsum("BLD,DM->BLM", h, p["wi_1"].astype(dt))
      x = x + jnp.einsum("BLM,MD->BLD", g * u, p["wo"].astype(dt)).astype(jnp.float32)
      return sharding.constrain(x, ("act_batch", "act_tokens", "act_embed"))

    x = jax.lax.fori_loop(0, cfg.num_layers, block, x)
    return rms_norm_f32(x, self.final_norm[...], cfg.eps).astype(dt)


def build_text_encoder(
  cfg: UMT5Config = UMT5_XXL, *, dtype=jnp.float32, param_dtype=None, seed: int = 0
) -> UMT5Encoder:
  """A randomly initialised encoder; annotated parameters are sharded if a mesh is current."""
  eager = not jax.sharding.get_abstract_mesh().empty
  with nnx.use_eager_sharding(eager), sharding.axis_rules():
    return UMT5Encoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


def abstract_text_encoder(cfg: UMT5Config = UMT5_XXL, *, dtype=jnp.float32, param_dtype=None):
  """The encoder's structure with ShapeDtypeStruct leaves (`nnx.eval_shape`); nothing allocated."""
  with nnx.use_eager_sharding(False), sharding.axis_rules():
    return nnx.eval_shape(
      lambda: UMT5Encoder(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(0))
    )
