"""Benchmark of the Wan2.1 VAE (real architecture, random weights): encode/decode time and peak
memory.

Times are the median of `--repeats` runs after one warm-up run (the warm-up, which compiles, is
reported separately). `--repeats 0` times the one compiling call only and the compilation apart
(an ahead-of-time lower + compile of the same program), for sizes where a CPU run takes minutes.
Peak memory is the device's `peak_bytes_in_use` on GPU; on CPU the process
peak RSS and XLA's compiled temporary-buffer size. With a GPU (or `--torch on`), the diffusers
PyTorch `AutoencoderKLWan` with the same weights runs on the same device in the same process, and
the time ratio and the output difference are reported.

  python benchmarks/vae_benchmark.py                               # 81x480x832, bf16
  python benchmarks/vae_benchmark.py --frames 9 --height 128 --width 128 --dtype fp32 --torch on
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from o2a_jax.vae.model import VAEConfig, WanVAE, _decode_jit, _encode_jit, randomize

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}


def parse_args(argv=None):
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--frames", type=int, default=81, help="pixel frames (4k+1)")
  p.add_argument("--height", type=int, default=480)
  p.add_argument("--width", type=int, default=832)
  p.add_argument("--batch", type=int, default=1)
  p.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument(
    "--tile", type=int, default=None, help="tile size in latent pixels (default: config)"
  )
  p.add_argument("--overlap", type=int, default=None, help="tile overlap in latent pixels")
  p.add_argument("--only", choices=["encode", "decode"], default=None)
  p.add_argument(
    "--torch",
    choices=["auto", "on", "off"],
    default="auto",
    help="also run diffusers' PyTorch VAE (auto: only on a GPU)",
  )
  p.add_argument("--json", default=None, help="write the results to this JSON file")
  return p.parse_args(argv)


def _timed(fn, repeats):
  t = time.perf_counter()
  out = fn()
  warm = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t)
  return out, warm, (statistics.median(times) if times else None)


def _peak_bytes():
  dev = jax.devices()[0]
  stats = dev.memory_stats() if hasattr(dev, "memory_stats") else None
  if stats and "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"], "device peak_bytes_in_use"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "process peak RSS"


def run_jax(args, vae, video, latents):
  res = {}
  tile_kw = {} if args.tile is None else {"tile": args.tile}
  if args.overlap is not None:
    tile_kw["overlap"] = args.overlap
  for name, fn, x in (("encode", vae.encode, video), ("decode", vae.decode, latents)):
    if args.only not in (None, name):
      continue
    out, warm, med = _timed(
      lambda fn=fn, x=x: jax.block_until_ready(fn(x, **tile_kw)), args.repeats
    )
    peak, how = _peak_bytes()
    res[name] = {
      "median_s": med,
      "first_call_s": warm,
      "peak_bytes": peak,
      "peak_kind": how,
      "out_shape": list(out.shape),
      "out": out,
    }
  # XLA's own estimate of the temporary memory of each program (no run needed).
  from flax import nnx

  graphdef, state = nnx.split(vae)
  for name, jitted, x in (("encode", _encode_jit, video), ("decode", _decode_jit, latents)):
    if name not in res:
      continue
    cfg = vae.cfg
    tile = args.tile or getattr(cfg, f"{name}_tile")
    ov = args.overlap if args.overlap is not None else getattr(cfg, f"{name}_overlap")
    if name == "encode":
      h, w = x.shape[2] // 8, x.shape[3] // 8
    else:
      h, w = x.shape[2], x.shape[3]
    plans = WanVAE._plans(h, w, tile, ov)
    try:
      t = time.perf_counter()
      compiled = jitted.lower(graphdef, state, x, plans).compile()
      res[name]["compile_s"] = time.perf_counter() - t
      mem = compiled.memory_analysis()
      res[name]["xla_temp_bytes"] = int(mem.temp_size_in_bytes)
    except Exception as e:  # memory_analysis is optional per backend
      res[name]["xla_temp_bytes"] = f"unavailable: {e}"
  return res


def run_torch(args, vae, video, latents):
  import torch
  from diffusers import AutoencoderKLWan

  from o2a_jax.convert.vae import vae_state_dict

  device = "cuda" if torch.cuda.is_available() else "cpu"
  tdtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
  cfg = vae.cfg
  model = AutoencoderKLWan(
    base_dim=cfg.base_dim,
    z_dim=cfg.z_dim,
    dim_mult=list(cfg.dim_mult),
    num_res_blocks=cfg.num_res_blocks,
    temperal_downsample=list(cfg.temperal_downsample),
  )
  sd = {k: torch.from_numpy(np.array(v, np.float32)) for k, v in vae_state_dict(vae).items()}
  model.load_state_dict(sd, strict=True)
  model = model.to(device=device, dtype=tdtype).eval()
  res = {}
  tv = torch.from_numpy(np.moveaxis(np.asarray(video, np.float32), -1, 1)).to(device, tdtype)
  tz = torch.from_numpy(np.moveaxis(np.asarray(latents, np.float32), -1, 1)).to(device, tdtype)

  def sync(x):
    if device == "cuda":
      torch.cuda.synchronize()
    return x

  for name, fn, x in (
    ("encode", lambda x: model.encode(x).latent_dist.mode(), tv),
    ("decode", lambda x: model.decode(x).sample, tz),
  ):
    if args.only not in (None, name):
      continue
    if device == "cuda":
      torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
      out, warm, med = _timed(lambda fn=fn, x=x: sync(fn(x)), args.repeats)
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else None
    res[name] = {
      "median_s": med,
      "first_call_s": warm,
      "peak_bytes": peak,
      "out": np.moveaxis(out.float().cpu().numpy(), 1, -1),
    }
  return res


def main(argv=None):
  args = parse_args(argv)
  if (args.frames - 1) % 4 or args.height % 8 or args.width % 8:
    sys.exit("--frames must be 4k+1 and --height/--width multiples of 8")
  if args.repeats < 0:
    sys.exit("--repeats must be >= 0")
  dtype = DTYPES[args.dtype]
  cfg = VAEConfig()
  vae = randomize(WanVAE(cfg, dtype=dtype))
  rng = np.random.default_rng(0)
  b, f, h, w = args.batch, args.frames, args.height, args.width
  t = (f - 1) // 4 + 1
  video = jnp.asarray(rng.uniform(-1, 1, (b, f, h, w, 3)).astype(np.float32))
  latents = jnp.asarray(rng.standard_normal((b, t, h // 8, w // 8, cfg.z_dim)).astype(np.float32))
  print(
    f"backend {jax.default_backend()} ({jax.devices()[0].device_kind}), video {video.shape}, "
    f"latents {latents.shape}, {args.dtype}, tile {args.tile or cfg.decode_tile}",
    flush=True,
  )
  results = {"args": vars(args), "jax": run_jax(args, vae, video, latents)}
  use_torch = args.torch == "on" or (args.torch == "auto" and jax.default_backend() == "gpu")
  if use_torch and not args.repeats:
    sys.exit("--repeats 0 times single compiling calls; the PyTorch comparison needs --repeats 1+")
  if use_torch:
    results["torch"] = run_torch(args, vae, video, latents)
  for name in ("encode", "decode"):
    if name not in results["jax"]:
      continue
    r = results["jax"][name]
    if r["median_s"] is None:  # --repeats 0: the one (compiling) call, compile timed apart
      run = r["first_call_s"] - r.get("compile_s", 0.0)
      line = (
        f"{name}: jax one call {r['first_call_s']:.1f} s, of which compile "
        f"{r.get('compile_s', float('nan')):.1f} s (timed apart) -> run ~{run:.1f} s, "
        f"peak {r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_kind']})"
      )
    else:
      line = (
        f"{name}: jax median {r['median_s']:.3f} s (first call {r['first_call_s']:.1f} s), "
        f"peak {r['peak_bytes'] / 2**30:.2f} GiB ({r['peak_kind']})"
      )
    if isinstance(r.get("xla_temp_bytes"), int):
      line += f", XLA temp {r['xla_temp_bytes'] / 2**30:.2f} GiB"
    if use_torch:
      tr = results["torch"][name]
      a, ref = np.asarray(r["out"], np.float64), np.asarray(tr["out"], np.float64)
      err = float(np.linalg.norm(a - ref) / np.linalg.norm(ref))
      line += (
        f" | torch median {tr['median_s']:.3f} s"
        + (f", peak {tr['peak_bytes'] / 2**30:.2f} GiB" if tr["peak_bytes"] else "")
        + f" | torch/jax time ratio {tr['median_s'] / r['median_s']:.2f} | rel diff {err:.2e}"
      )
    print(line, flush=True)
  for side in ("jax", "torch"):
    for r in results.get(side, {}).values():
      r.pop("out", None)
  if args.json:
    from o2a_jax.io.atomic import atomic_path

    with atomic_path(args.json) as tmp:
      tmp.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
  main()
