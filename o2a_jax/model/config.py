"""DenoiserConfig: the frozen, validated description of a One-to-All denoiser.

The ml-collections config stops at `configs/`; the model is built from this dataclass, which
`configs/o2a.py` produces with `DenoiserConfig(**config.model)`.
"""

from __future__ import annotations

import dataclasses
import math

import jax.numpy as jnp

REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def hint_time_down(stages: int) -> tuple[bool, ...]:
  """Which of a pose encoder's `stages` halve time: the second and third (4x, the VAE's temporal
  stride; (False, True, True, False) for the released four)."""
  if stages < 3:
    raise ValueError(f"a pose encoder of {stages} stages cannot halve time twice (needs >= 3)")
  return tuple(0 < d < 3 for d in range(stages))


@dataclasses.dataclass(frozen=True, kw_only=True)
class DenoiserConfig:
  """Architecture and numerics of the denoiser (official released hyper-parameters).

  Attributes:
    num_heads, head_dim: attention heads N and head dim K; the width is D = N * K.
    num_layers: main DiT blocks.
    ffn_dim: MLP hidden width F.
    text_dim: width of the text-encoder embeddings (4096 for UMT5-XXL).
    freq_dim: sinusoidal timestep-embedding width.
    ref_layers: reference-extractor blocks M (M + 1 reference features).
    pose_layers: pose self-attention blocks, injected after main blocks 1..pose_layers.
    in_channels / ref_in_channels / out_channels: latent channels (ref = image | mask latents).
    patch_size: (t, h, w) patch of the latent grid.
    eps: epsilon of every LayerNorm / RMSNorm in the blocks.
    hint_channels, hint_groups: the causal pose encoder's stage widths and GroupNorm groups;
      len(hint_channels) stages each halve H and W.
    hint_time_down: which pose-encoder stages halve time. cond_channels, cond_blocks, cond_groups:
    the 2-D reference prefix encoder (`image_to_cond`). rope_max_seq_len, rope_theta: RoPE table
    size and base. dtype: compute dtype; param_dtype: parameter storage dtype. attn_impl:
    `kernels.attention` implementation. scan_layers: run stacked blocks with `lax.scan` (one trace
    per block type). remat: rematerialisation policy for the scanned blocks, one of REMAT_POLICIES.
    prefix_frame: the reference prefix latent frame (`image_to_cond`, official reference prefix
    frame). pose_branch: the pose encoder and pose blocks (official pose path); False needs
    pose_layers = 0.
      Both False is the stage-1 model (official `WanTransformer3DModel_Refextractor_2D`, official
      three training stages).
  """

  num_heads: int
  head_dim: int = 128
  num_layers: int
  ffn_dim: int
  text_dim: int = 4096
  freq_dim: int = 256
  ref_layers: int
  pose_layers: int
  in_channels: int = 16
  ref_in_channels: int = 32
  out_channels: int = 16
  patch_size: tuple[int, int, int] = (1, 2, 2)
  eps: float = 1e-6
  hint_channels: tuple[int, ...] = (16, 16, 16, 16)
  hint_groups: int = 4
  hint_time_down: tuple[bool, ...] = (False, True, True, False)
  cond_channels: int = 16
  cond_blocks: int = 3
  cond_groups: int = 4
  rope_max_seq_len: int = 1024
  rope_theta: float = 10000.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attn_impl: str = "xla"
  scan_layers: bool = True
  remat: str = "none"
  prefix_frame: bool = True
  pose_branch: bool = True

  def __post_init__(self):
    def need(cond, msg):
      if not cond:
        raise ValueError(f"DenoiserConfig: {msg}")

    need(self.num_heads > 0 and self.head_dim > 0, "num_heads and head_dim must be positive")
    need(self.head_dim % 2 == 0, f"head_dim {self.head_dim} must be even for RoPE")
    need(self.num_layers >= 1, "num_layers must be >= 1")
    need(self.ref_layers >= 0, "ref_layers must be >= 0")
    need(
      0 <= self.pose_layers <= self.num_layers - 1,
      f"pose_layers {self.pose_layers} must be in [0, num_layers - 1 = {self.num_layers - 1}]",
    )
    need(
      self.pose_branch or self.pose_layers == 0,
      f"pose_layers {self.pose_layers} needs the pose branch (pose_branch=True)",
    )
    need(len(self.patch_size) == 3, "patch_size must be (t, h, w)")
    need(self.patch_size[0] == 1, "only temporal patch size 1 is supported (as released)")
    need(
      len(self.hint_time_down) == len(self.hint_channels), "hint_time_down needs one flag per stage"
    )
    need(
      all(c % self.hint_groups == 0 for c in self.hint_channels), "hint_groups must divide channels"
    )
    need(self.cond_channels % self.cond_groups == 0, "cond_groups must divide cond_channels")
    need(self.remat in REMAT_POLICIES, f"remat {self.remat!r} not in {REMAT_POLICIES}")
    for name in ("dtype", "param_dtype"):
      need(getattr(self, name) in ("float32", "bfloat16"), f"{name} must be float32 or bfloat16")
    # Lists from ConfigDicts / JSON become tuples so the config stays hashable.
    for name in ("patch_size", "hint_channels", "hint_time_down"):
      object.__setattr__(self, name, tuple(getattr(self, name)))

  @property
  def dim(self) -> int:
    return self.num_heads * self.head_dim

  @property
  def ref_interval(self) -> int:
    """Main block i reads reference feature i // ref_interval (the released hyper-parameters)."""
    return math.ceil(self.num_layers / (self.ref_layers + 1))

  @property
  def spatial_down(self) -> int:
    """Pixel-to-token stride of the pose encoder (must equal VAE 8 x patch 2)."""
    return 2 ** len(self.hint_channels)

  def tokens_per_frame(self, height: int, width: int) -> int:
    """Tokens of one latent frame of an H x W pixel clip (H/16 x W/16 as released)."""
    return (height // self.spatial_down) * (width // self.spatial_down)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  def replace(self, **kw) -> DenoiserConfig:
    return dataclasses.replace(self, **kw)

  def stage1(self) -> DenoiserConfig:
    """The stage-1 variant of this model: no prefix frame, no pose branch (official three training
    stages).
    """
    return self.replace(prefix_frame=False, pose_branch=False, pose_layers=0)


PRESETS: dict[str, dict] = {
  # The golden fixture's configuration (shared/golden/model_tiny/config.json).
  "tiny": dict(
    num_heads=2,
    head_dim=128,
    num_layers=3,
    ffn_dim=64,
    text_dim=16,
    freq_dim=32,
    ref_layers=2,
    pose_layers=2,
  ),
  "1.3b": dict(num_heads=12, num_layers=30, ffn_dim=8960, ref_layers=14, pose_layers=2),
  "14b": dict(num_heads=40, num_layers=40, ffn_dim=13824, ref_layers=7, pose_layers=1),
}


@dataclasses.dataclass(frozen=True)
class PresetDefaults:
  """What a preset implies beyond the denoiser: its VAE and its inference defaults.

  vae: the VAE architecture (`VAEConfig` fields; diffusers `AutoencoderKLWan` arguments).
  max_short: the default short side of generated videos in pixels (None: the inputs' size).
  image_guidance: the default reference guidance scale.
  """

  vae: dict
  max_short: int | None
  image_guidance: float


_WAN_VAE = dict(base_dim=96, dim_mult=(1, 2, 4, 4), num_res_blocks=2)  # the shipped Wan2.1 VAE
PRESET_DEFAULTS: dict[str, PresetDefaults] = {
  # The golden fixture's small VAE (shared/golden/vae_tiny).
  "tiny": PresetDefaults(
    vae=dict(base_dim=16, dim_mult=(1, 2, 2, 2), num_res_blocks=1), max_short=None,
    image_guidance=2.5,
  ),
  "1.3b": PresetDefaults(vae=_WAN_VAE, max_short=384, image_guidance=2.5),
  "14b": PresetDefaults(vae=_WAN_VAE, max_short=576, image_guidance=2.0),
}  # fmt: skip


def defaults_for(cfg: DenoiserConfig) -> PresetDefaults:
  """The defaults of the widest preset not wider than `cfg` (a checkpoint's architecture)."""
  width = lambda name: preset(name).dim
  fits = [n for n in PRESETS if width(n) <= cfg.dim]
  return PRESET_DEFAULTS[max(fits, key=width) if fits else min(PRESETS, key=width)]


def preset(name: str, **overrides) -> DenoiserConfig:
  """The named architecture (`tiny`, `1.3b`, `14b`) with optional field overrides."""
  if name not in PRESETS:
    raise ValueError(f"unknown model preset {name!r}; choose one of {sorted(PRESETS)}")
  return DenoiserConfig(**{**PRESETS[name], **overrides})
