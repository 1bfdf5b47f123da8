r"""One-to-All denoiser configurations: model presets and the golden-fixture configuration.

  get_config("tiny")     the golden fixture's model (shared/golden/model_tiny), for tests
  get_config("1.3b")     One-to-All-1.3b (Wan2.1-T2V-1.3B backbone, 14 extractor, 2 pose blocks)
  get_config("14b")      One-to-All-14b (Wan2.1-T2V-14B backbone, 7 extractor, 1 pose block)
  get_config("1.3b,bf16,remat=full")   options: bf16, attn=<impl>, remat=<policy>, noscan

Used by `o2a` commands as `--config configs/o2a.py:1.3b --config.model.attn_impl=cudnn`.
"""

import ml_collections as mlc

from o2a_jax import config_lib
from o2a_jax.model.config import PRESETS


def get_config(arg: str | None = None) -> mlc.ConfigDict:
  arg = config_lib.parse_arg(
    arg, variant="tiny", bf16=False, attn="xla", remat="none", noscan=False
  )
  if arg.variant not in PRESETS:
    raise KeyError(f"unknown variant {arg.variant!r}; choose one of {sorted(PRESETS)}")
  c = mlc.ConfigDict()
  c.seed = 0
  c.model = mlc.ConfigDict(
    dict(
      num_heads=0,
      head_dim=128,
      num_layers=0,
      ffn_dim=0,
      text_dim=4096,
      freq_dim=256,
      ref_layers=0,
      pose_layers=0,
      in_channels=16,
      ref_in_channels=32,
      out_channels=16,
      patch_size=(1, 2, 2),
      eps=1e-6,
      hint_channels=(16, 16, 16, 16),
      hint_groups=4,
      hint_time_down=(False, True, True, False),
      cond_channels=16,
      cond_blocks=3,
      cond_groups=4,
      rope_max_seq_len=1024,
      rope_theta=10000.0,
      dtype="bfloat16" if arg.bf16 else "float32",
      param_dtype="bfloat16" if arg.bf16 else "float32",
      attn_impl=arg.attn,
      scan_layers=not arg.noscan,
      remat=arg.remat,
    )
  )
  c.model.update(PRESETS[arg.variant])
  # Mesh (data, fsdp, context, tensor); -1 takes the remaining devices.
  c.mesh_shape = (1, -1, 1, 1)
  if arg.variant == "tiny":
    # The golden fixture's inputs: 2 samples, 9 frames (3 latent), 64x96 pixels, 7 text tokens.
    c.example = mlc.ConfigDict(dict(batch=2, frames=9, height=64, width=96, text_len=7))
  return c
