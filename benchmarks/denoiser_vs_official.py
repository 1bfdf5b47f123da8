"""The denoiser forward side by side with the official PyTorch model on this machine.

Builds the official `WanTransformer3DModel` (transformer_wan_refextractor_2d_controlnet_last_prefix,
with `set_up_controlnet` / `set_up_refextractor`, as the released inference does) at the 1.3B
width with few blocks, fills every parameter with seeded random values, loads the same weights
into ours through `o2a_jax.convert.load_official`, feeds both the same inputs and reports the
median forward time of each (after a warm-up: our compile, PyTorch's first call), the ratio
ours / PyTorch and the relative output difference ||ours - torch|| / ||torch||. Float32 on both
sides; PyTorch uses every core (`torch.set_num_threads`), XLA does by default.

Needs torch (CPU), diffusers==0.33.0 and einops (not project dependencies), and a checkout of the
official code (ssj9596/One-to-All-Animation): only the model's own files are imported (the
`opensora` packages are stubbed so that their other model families are not).

  python benchmarks/denoiser_vs_official.py --official ~/One-to-All-Animation --json d.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import types

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
PACKAGE = "opensora.model_variants.wanx_diffusers_src"
MODULE = f"{PACKAGE}.transformer_wan_refextractor_2d_controlnet_last_prefix"


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--official", required=True, help="checkout of ssj9596/One-to-All-Animation")
  p.add_argument("--layers", type=int, default=2, help="main blocks (default 2)")
  p.add_argument("--ref-layers", type=int, default=2, help="extractor blocks (default 2)")
  p.add_argument("--pose-layers", type=int, default=1, help="pose blocks (default 1)")
  p.add_argument("--latent", default="5x30x52", help="latent T x h x w (default 5x30x52)")
  p.add_argument("--text-len", type=int, default=512, help="text tokens (default 512)")
  p.add_argument("--repeats", type=int, default=3, help="timed runs per side (default 3)")
  p.add_argument("--threads", type=int, default=os.cpu_count(), help="PyTorch threads")
  p.add_argument("--json", default=None, help="write the results here")
  return p.parse_args(argv)


def official_class(repo: pathlib.Path):
  """The official model class, importing its own files only (stub parent packages)."""
  base = repo / "video-generation" / "opensora"
  if not (base / "model_variants" / "wanx_diffusers_src").is_dir():
    raise SystemExit(f"--official {repo}: no video-generation/opensora/model_variants in it")
  for name, sub in (
    ("opensora", ""),
    ("opensora.model_variants", "model_variants"),
    ("opensora.model_variants.wanx_diffusers_src", "model_variants/wanx_diffusers_src"),
    ("opensora.controlnet_modules", "controlnet_modules"),
    ("opensora.vae_variants", "vae_variants"),
    ("opensora.vae_variants.hunyuan_vae_src", "vae_variants/hunyuan_vae_src"),
  ):
    module = types.ModuleType(name)
    module.__path__ = [str(base / sub)]
    sys.modules[name] = module
  return importlib.import_module(MODULE).WanTransformer3DModel


def block_config(layers: int, in_channels: int = 16) -> dict:
  """A Wan2.1-1.3B-wide block config (12 heads x 128, FFN 8960, text 4096) with `layers` blocks."""
  return {
    "_class_name": "WanTransformer3DModel",
    "added_kv_proj_dim": None,
    "attention_head_dim": 128,
    "cross_attn_norm": True,
    "eps": 1e-6,
    "ffn_dim": 8960,
    "freq_dim": 256,
    "image_dim": None,
    "in_channels": in_channels,
    "num_attention_heads": 12,
    "num_layers": layers,
    "out_channels": 16,
    "patch_size": [1, 2, 2],
    "qk_norm": "rms_norm_across_heads",
    "rope_max_seq_len": 1024,
    "text_dim": 4096,
  }


def build_official(cls, args, folder: pathlib.Path):
  import torch

  model = cls.from_config(block_config(args.layers))
  pose = folder / "pose.json"
  pose.write_text(json.dumps(block_config(args.pose_layers)))
  ref = folder / "ref.json"
  ref.write_text(json.dumps({**block_config(args.ref_layers, 32), "ref_repeat": False}))
  model.set_up_controlnet(str(pose), torch.float32)
  model.set_up_refextractor(str(ref), torch.float32)
  gen = torch.Generator().manual_seed(0)
  with torch.no_grad():  # every parameter random (zero-initialised ones too): every path counts
    for name, p in model.named_parameters():
      if p.ndim >= 2:
        bound = 1.0 / np.sqrt(np.prod(p.shape[1:]))
        p.copy_((torch.rand(p.shape, generator=gen) * 2 - 1) * bound)
      else:
        p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=gen) if "norm" in name else
                0.02 * torch.randn(p.shape, generator=gen))  # fmt: skip
  return model.eval()


def _median_time(fn, repeats: int) -> tuple[float, float]:
  t0 = time.perf_counter()
  fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return statistics.median(times), first


def main(argv=None) -> dict:
  args = parse_args(argv)
  import jax
  import jax.numpy as jnp
  import torch
  from safetensors.torch import save_file

  from o2a_jax.convert import load_official

  torch.set_num_threads(args.threads)
  t, h, w = (int(v) for v in args.latent.split("x"))
  frames, height, width = 4 * (t - 1) + 1, 8 * h, 8 * w
  rng = np.random.default_rng(0)
  inputs = {
    "x": rng.standard_normal((1, 16, t, h, w)),
    "t": np.array([500.0]),
    "text": rng.standard_normal((1, args.text_len, 4096)),
    "image_latents": rng.standard_normal((1, 32, 1, h, w)),
    "pose_video": rng.uniform(-1, 1, (1, 3, frames, height, width)),
    "ref_pose": rng.uniform(-1, 1, (1, 3, 1, height, width)),
  }
  inputs = {k: v.astype(np.float32) for k, v in inputs.items()}
  with tempfile.TemporaryDirectory() as tmp:
    folder = pathlib.Path(tmp)
    official = build_official(official_class(pathlib.Path(args.official)), args, folder)
    save_file({k: v.contiguous() for k, v in official.state_dict().items()},
              str(folder / "model.safetensors"))  # fmt: skip
    ours = load_official(folder, dtype=jnp.float32)

  tt = {k: torch.from_numpy(v) for k, v in inputs.items()}

  def run_torch():
    with torch.no_grad():
      return official(
        hidden_states=tt["x"], timestep=tt["t"], encoder_hidden_states=tt["text"],
        image_latents=tt["image_latents"], controlnet_cond=tt["pose_video"],
        image_pose=tt["ref_pose"], conditioning_scale=1.0, return_dict=False,
      )[0]  # fmt: skip

  cl = lambda a: jnp.asarray(np.moveaxis(a, 1, -1))  # channels-first -> channels-last
  jargs = (
    cl(inputs["x"]),
    jnp.asarray(inputs["t"]),
    jnp.asarray(inputs["text"]),
    cl(inputs["image_latents"]),
    cl(inputs["pose_video"]),
    cl(inputs["ref_pose"]),
  )
  fwd = jax.jit(lambda *a: ours(*a))
  run_jax = lambda: jax.block_until_ready(fwd(*jargs))

  jax_s, jax_first = _median_time(run_jax, args.repeats)
  torch_s, torch_first = _median_time(run_torch, args.repeats)
  ref = np.moveaxis(run_torch().numpy(), 1, -1)
  got = np.asarray(run_jax())
  err = float(np.linalg.norm(got - ref) / np.linalg.norm(ref))
  res = {
    "blocks": {"main": args.layers, "extractor": args.ref_layers, "pose": args.pose_layers},
    "latent": [t, h, w],
    "pixels": [frames, height, width],
    "text_len": args.text_len,
    "jax_s": jax_s,
    "torch_s": torch_s,
    "ratio_jax_over_torch": jax_s / torch_s,
    "jax_first_call_s": jax_first,
    "torch_first_call_s": torch_first,
    "rel_diff": err,
    "threads": args.threads,
    "jax": jax.__version__,
    "torch": torch.__version__,
    "conv3d": __import__("o2a_jax.layers.conv", fromlist=["strategy"]).strategy(),
  }
  print(
    f"denoiser forward ({args.layers}+{args.ref_layers}+{args.pose_layers} blocks, 1.3B width, "
    f"latents {t}x{h}x{w}): jax {jax_s:.3f} s, torch {torch_s:.3f} s (median of "
    f"{args.repeats}), ratio {jax_s / torch_s:.2f}, rel diff {err:.2e}",
    flush=True,
  )
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(res, indent=1))
  return res


if __name__ == "__main__":
  main()
