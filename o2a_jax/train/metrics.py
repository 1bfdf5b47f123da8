"""Training observability: the analytic FLOP count (MFU), TensorBoard scalars, the progress bar.

FLOPs (`denoiser_flops`): the multiply-adds of every matmul, attention product and convolution
of the denoiser forward at a batch shape, counted as 2 FLOPs each; element-wise work (norms,
modulation, activations, softmax) is left out, as in the usual MFU convention. A training step
counts 3x the forward (backward = 2x forward: gradients for activations and weights), whatever
the trainable set: MFU measures useful model work, not what a frozen set lets XLA skip.
`tests/train_loop_test.py` checks the count against XLA's own cost analysis of the tiny model.

MFU = FLOPs per step / (step time x devices x per-device peak), the peak from `PEAK_TFLOPS` by
device kind (dense bf16) or `config.train.peak_tflops`.
"""

from __future__ import annotations

import os
import pathlib

import jax

from o2a_jax.model.config import DenoiserConfig
from o2a_jax.vae.strides import latent_frames

# Dense bf16 peak TFLOP/s per device (vendor figures, no sparsity).
PEAK_TFLOPS = {
  "NVIDIA H100 80GB HBM3": 989.0,
  "NVIDIA H100": 989.0,
  "NVIDIA H200": 989.0,
  "NVIDIA A100-SXM4-80GB": 312.0,
  "NVIDIA A100-SXM4-40GB": 312.0,
  "TPU v4": 275.0,
  "TPU v5 lite": 197.0,
  "TPU v5e": 197.0,
  "TPU v5p": 459.0,
  "TPU v6 lite": 918.0,
  "TPU v6e": 918.0,
}


def peak_tflops(device: jax.Device | None = None) -> float | None:
  """Per-device dense bf16 peak, or None where unknown (CPU)."""
  kind = (device or jax.devices()[0]).device_kind
  if kind in PEAK_TFLOPS:
    return PEAK_TFLOPS[kind]
  for name, value in PEAK_TFLOPS.items():
    if kind.startswith(name):
      return value
  return None


def _conv_out(n: int, stride: int, pad: int, k: int = 3) -> int:
  return (n + pad - k) // stride + 1


def _pose_encoder_flops(cfg: DenoiserConfig, frames: int, height: int, width: int) -> int:
  """One clip (F, H, W, 3) through the causal 3-D pose encoder (replicate padding 2/1/1)."""
  kvol = 27
  c = cfg.hint_channels
  flops = 2 * frames * height * width * kvol * 3 * c[0]  # conv_in
  t, h, w = frames, height, width
  for i, ch in enumerate(c):
    flops += 2 * 2 * t * h * w * kvol * ch * ch  # resnet: two convs
    t = _conv_out(t, 2 if cfg.hint_time_down[i] else 1, 2)
    h, w = _conv_out(h, 2, 2), _conv_out(w, 2, 2)
    flops += 2 * t * h * w * kvol * ch * ch  # strided down conv
  flops += 2 * t * h * w * kvol * c[-1] * cfg.dim  # conv_out
  return flops


def _prefix_encoder_flops(cfg: DenoiserConfig, h: int, w: int) -> int:
  """The 2-D reference prefix encoder on one (h, w, 32) latent frame."""
  ch = cfg.cond_channels
  flops = 2 * h * w * 9 * cfg.ref_in_channels * ch
  flops += cfg.cond_blocks * 2 * (2 * h * w * 9 * ch * ch)
  flops += 2 * h * w * 9 * ch * cfg.in_channels
  return flops


def denoiser_flops(
  cfg: DenoiserConfig,
  *,
  batch: int,
  frames: int,
  height: int,
  width: int,
  text_len: int,
  token_replace: bool = False,
) -> dict[str, int]:
  """Forward FLOPs of the denoiser on a (batch, frames, height, width) pixel clip, by part.

  Latents have T = (F-1)//4 + 1 frames; tokens L = (T+1) (H/16)(W/16) including the reference
  prefix frame (T (H/16)(W/16) for the stage-1 model without prefix frame and pose branch); the
  reference extractor sees S_r = (H/16)(W/16) tokens (16 = `cfg.spatial_down`, VAE 8 x patch 2
  as released).
  Returns a dict of parts and `total`.
  """
  d, f_mlp, p = cfg.dim, cfg.ffn_dim, cfg.patch_size[1]
  t = latent_frames(frames)
  lat = cfg.spatial_down // p  # pixels per latent pixel (VAE stride; 8 as released)
  h, w = height // lat, width // lat
  n = cfg.tokens_per_frame(height, width)  # tokens per latent frame
  prefix = getattr(cfg, "prefix_frame", True)
  pose = getattr(cfg, "pose_branch", True)
  tokens = (t + int(prefix)) * n
  s_ref, s_txt = n, text_len
  lin = lambda m, a, b: 2 * m * a * b  # (m, a) @ (a, b)

  def self_block(m):  # self-attention (q, k, v, out) + scores + FFN on m tokens
    return 4 * lin(m, d, d) + 4 * m * m * d + 2 * lin(m, d, f_mlp)

  main = (
    self_block(tokens)
    + 2 * lin(s_ref, d, d)  # HRFA add_k_proj, add_v_proj
    + 4 * tokens * s_ref * d  # HRFA scores and values
    + 2 * lin(tokens, d, d)  # attn2 q, out
    + 2 * lin(s_txt, d, d)  # attn2 k, v
    + 4 * tokens * s_txt * d
  )
  time_emb = lin(1, cfg.freq_dim, d) + lin(1, d, d) + lin(1, d, 6 * d)
  parts = {
    "main_blocks": cfg.num_layers * main,
    "pose_blocks": cfg.pose_layers * (self_block(tokens) + lin(tokens, d, d)),
    "extractor": (
      lin(s_ref, p * p * cfg.ref_in_channels, d)
      + time_emb
      + cfg.ref_layers * self_block(s_ref)
      + (cfg.ref_layers + 1) * lin(s_ref, d, d)
    ),
    "embeddings": (
      lin(tokens, p * p * cfg.in_channels, d)
      + time_emb * (2 if token_replace else 1)
      + lin(s_txt, cfg.text_dim, d)
      + lin(s_txt, d, d)
      + lin(tokens, d, p * p * cfg.out_channels)
    ),
    "pose_encoder": (
      _pose_encoder_flops(cfg, frames, height, width) + _pose_encoder_flops(cfg, 1, height, width)
      if pose
      else 0
    ),
    "prefix_encoder": _prefix_encoder_flops(cfg, h, w) if prefix else 0,
  }
  parts = {k: batch * v for k, v in parts.items()}
  parts["total"] = sum(parts.values())
  return parts


def train_step_flops(cfg: DenoiserConfig, **shape) -> int:
  """Model FLOPs of one training step: forward + backward = 3x the forward."""
  return 3 * denoiser_flops(cfg, **shape)["total"]


class Writer:
  """TensorBoard scalars (tensorboardX) from process 0; a no-op elsewhere."""

  def __init__(self, logdir: str | os.PathLike, *, enabled: bool = True):
    self._tb = None
    if enabled:
      from tensorboardX import SummaryWriter

      pathlib.Path(logdir).mkdir(parents=True, exist_ok=True)
      self._tb = SummaryWriter(str(logdir), flush_secs=10)

  def scalars(self, step: int, values: dict[str, float]) -> None:
    if self._tb is None:
      return
    for name, value in values.items():
      self._tb.add_scalar(name, float(value), global_step=step)

  def text(self, step: int, name: str, value: str) -> None:
    if self._tb is not None:
      self._tb.add_text(name, value, global_step=step)

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def postfix(values: dict[str, float]) -> dict[str, str]:
  """The progress bar's figures, formatted compactly."""
  fmt = {
    "loss": "{:.4f}",
    "lr": "{:.2e}",
    "grad_norm": "{:.3f}",
    "steps_per_s": "{:.2f}",
    "tokens_per_s": "{:.3g}",
    "mfu": "{:.1%}",
    "skipped": "{:d}",
  }
  out = {}
  for k, f in fmt.items():
    if k in values and values[k] is not None:
      out[k] = f.format(int(values[k]) if f == "{:d}" else values[k])
  return out
