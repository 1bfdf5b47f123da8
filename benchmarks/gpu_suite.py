"""The prepared GPU check: kernel numerics, attention speed, a train step, a denoising step and the
VAE decode, in one run that fits a short device lease.

Each section runs in its own Python process under a time cap taken from one overall budget, so a
hang or a crash costs that section only; the JSON is rewritten (atomically) after every section,
so a run killed from outside still leaves everything measured before. Sections, in order:

  env                 versions, device, memory, driver
  train_step          1.3B stage-2 step, 512 bucket, 29 frames, bf16, remat=full
                      (`train_benchmark.py`): step time, model FLOPs, MFU
  denoise_step        1.3B, 81x480x832, three-pass guidance, bf16 (`inference_benchmark.py`)
  vae_decode          Wan VAE decode of 81x480x832 latents, bf16 (`vae_benchmark.py`)
  attention_numerics  cudnn / pallas_gpu / pallas_mosaic against the `xla` oracle: output and every
                      gradient, relative error ||a-b||/||b||, self / reference / hybrid at lengths
                      that are not multiples of any block (1,999 queries, 389 keys), bf16 (all)
                      and f32 (pallas_gpu; cudnn and mosaic take bf16/f16 only); pass below 1e-2
                      (bf16) and 1e-5 (f32), the tolerances of the CPU tests
  attention_speed     hybrid attention (RoPE + self + reference) forward and backward TFLOP/s at
                      the 1.3B shape (12 heads, 32,760 + 1,560 tokens) and the 14B shape (40 heads,
                      75,600 + 3,600), head dim 128, bf16, each impl, beside the baseline
                      `jax.nn.dot_product_attention(implementation="cudnn")` on pre-rotated q/k
                      (`jax_cudnn`), and plain self-attention rows for the kernels' own ceiling

The attention sections run one process per implementation (`parts`), the riskiest last: a
kernel that faults leaves its CUDA context unusable, which must not cost the other rows.

JSON schema (`gpu_suite.json`): {"schema": "o2a-gpu-suite/1", "dry_run", "budget_s", "git",
"started", "wall_s", "sections": {NAME: ENTRY}}. A one-part section's ENTRY is {"status": "ok" |
"error" | "timeout" | "skipped", "cap_s", "wall_s", "error"?, "results"?}; an attention
section's is {"status": "ok" | "partial" | "error" | "skipped", "parts": {IMPL: ENTRY without
results}, "results": [rows of every part]}. Rows: numerics (impl, mode, shape, dtype, lengths,
rel_out, rel_grads, max_rel, status pass/FAIL/error); speed (impl, size, mode, lengths, fwd_ms,
bwd_ms, fwd_tflops, bwd_tflops or error). The benchmark sections' results are the JSON of the
script they run. `gpu_suite.log` holds every part's output.

  bash benchmarks/gpu_suite.sh                 # on the GPU (device tool), writes to $OUT
  python benchmarks/gpu_suite.py --dry-run --out /tmp/suite   # the same code, tiny, on CPU

Without a GPU and without --dry-run it exits 2 with a message: the figures would say nothing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from o2a_jax.io.error_text import first_line  # noqa: E402  (pure Python: the driver stays JAX-free)

SCHEMA = "o2a-gpu-suite/1"

# (name, ((part, time cap in seconds at full size), ...)). Each part runs in its own process;
# an attention part is a comma list of impls. Kernels that can fault get a process of their own
# (a fault poisons the CUDA context for the rest of its process: seen on the H200 with
# pallas_mosaic), the riskiest last. A part starts only with MIN_START_S of the budget left.
# Caps from the 2026-12-04 H200 runs (benchmarks/results/): pallas_gpu needed > 70 s for its
# numerics (Triton compiles six backward kernels) and > 60 s for its speed rows.
SECTIONS = (
  ("env", (("", 60),)),
  # The step figures first: with the attention sections first, a budget under ~560 s never
  # reached them (2026-12-04 run 3).
  ("train_step", (("", 200),)),
  ("denoise_step", (("", 150),)),
  ("vae_decode", (("", 120),)),
  ("attention_numerics", (("cudnn,pallas_gpu", 160), ("pallas_mosaic", 60))),
  ("attention_speed", (("jax_cudnn,cudnn,xla", 90), ("pallas_gpu", 150), ("pallas_mosaic", 60))),
)
MIN_START_S = 30
NUMERIC_TOL = {"bfloat16": 1e-2, "float32": 1e-5}


def _write_json(path: pathlib.Path, obj) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
    json.dump(obj, f, indent=1, default=str)
  os.chmod(f.name, 0o644)
  os.replace(f.name, path)


def _rel(a, b) -> float:
  import numpy as np

  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


# --- sections (each runs in a child process) ------------------------------------------------


def section_env(dry: bool, out: pathlib.Path, part: str = "") -> dict:
  import importlib.metadata as md
  import platform

  import jax

  dev = jax.devices()[0]
  info = {
    "python": platform.python_version(),
    "backend": jax.default_backend(),
    "device_kind": dev.device_kind,
    "device_count": jax.device_count(),
    "packages": {},
  }
  for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "ml-collections",
               "numpy", "jax-cuda13-plugin", "jax-cuda12-plugin"):  # fmt: skip
    try:
      info["packages"][name] = md.version(name)
    except md.PackageNotFoundError:
      pass
  try:
    stats = dev.memory_stats() or {}
    info["memory_bytes_limit"] = stats.get("bytes_limit")
  except Exception as e:  # CPU devices have none
    info["memory_stats_error"] = first_line(e, 400)
  try:
    smi = subprocess.run(
      ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
       "--format=csv,noheader"], capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
  except (OSError, subprocess.TimeoutExpired) as e:
    info["nvidia_smi"] = first_line(e, 400)
  return info


def _attention_inputs(heads, lq, lk, kd, dtype, seed=0):
  import jax
  import jax.numpy as jnp

  ks = jax.random.split(jax.random.PRNGKey(seed), 10)
  x = lambda i, n: jax.random.normal(ks[i], (1, n, heads, kd), jnp.float32).astype(dtype)

  def table(i, n, frame0=False):
    ang = jax.random.uniform(ks[i], (n, kd // 2), maxval=6.0)
    if frame0:  # the reference branch: temporal angles of frame index 0
      ang = ang.at[:, : kd // 6].set(0.0)
    return jnp.cos(ang), jnp.sin(ang)

  arrays = dict(q=x(0, lq), k=x(1, lq), v=x(2, lq), k_ref=x(3, lk), v_ref=x(4, lk), g=x(5, lq))
  tables = dict(
    q_rope=table(6, lq), k_rope=table(7, lq),
    q_ref_rope=table(6, lq, True), k_ref_rope=table(8, lk, True),
  )  # fmt: skip
  return arrays, tables


def _mode_fn(impl, mode, t, cfg=None):
  """The differentiable closure of one (impl, mode) over its array arguments."""
  import kernels
  from kernels.attention import pallas_gpu, pallas_mosaic, xla_chunked

  mods = {"xla": xla_chunked, "pallas_gpu": pallas_gpu, "pallas_mosaic": pallas_mosaic}
  kw = {} if cfg is None else {"cfg": cfg}
  if impl in mods:
    attention, hybrid = mods[impl].attention, mods[impl].hybrid_attention
  else:  # cudnn and anything registered: the public entry points
    attention = lambda *a, **k: kernels.attention(*a, **k, impl=impl)
    hybrid = lambda *a, **k: kernels.hybrid_attention(*a, **k, impl=impl)
  if mode == "self":
    return lambda q, k, v: attention(q, k, v, q_rope=t["q_rope"], k_rope=t["k_rope"], **kw)
  if mode == "reference":
    return lambda q, k, v: attention(q, k, v, q_rope=t["q_ref_rope"], k_rope=t["k_ref_rope"], **kw)
  return lambda *a: hybrid(*a, **t, **kw)


def _mode_args(arrays, mode):
  names = {"self": "q k v", "reference": "q k_ref v_ref", "hybrid": "q k v k_ref v_ref"}[mode]
  return [arrays[n] for n in names.split()]


NUMERIC_CASES = {  # impl -> dtypes (cudnn and mosaic take bf16/f16 only)
  "cudnn": ("bfloat16",),
  "pallas_gpu": ("bfloat16", "float32"),
  "pallas_mosaic": ("bfloat16",),
}


def section_attention_numerics(dry: bool, out: pathlib.Path, part: str) -> list:
  """One impl against the `xla` oracle; the oracle runs at HIGHEST matmul precision (on a GPU,
  XLA's default float32 dot is TF32, which would blur the float32 check)."""
  import jax

  gpu = jax.default_backend() == "gpu"
  heads, kd = (2, 128) if dry else (4, 128)
  rows = []
  for impl in part.split(","):
    rows += _numerics_one(impl, gpu, dry, heads, kd)
  return rows


def _numerics_one(impl: str, gpu: bool, dry: bool, heads: int, kd: int) -> list:
  import jax
  import jax.numpy as jnp

  from kernels.attention import pallas_gpu, pallas_mosaic

  shapes = [("ragged", 72, 41)] if dry else [("ragged", 1999, 389)]
  if impl == "pallas_mosaic" and not dry:  # aligned first: tells a padding bug from the rest
    shapes.insert(0, ("aligned", 2048, 512))
  rows = []
  for shape, lq, lk in shapes:
    for dtype_name in NUMERIC_CASES[impl]:
      arrays, t = _attention_inputs(heads, lq, lk, kd, jnp.dtype(dtype_name))
      for mode in ("self", "reference", "hybrid"):
        row = dict(impl=impl, mode=mode, shape=shape, dtype=dtype_name, heads=heads, lq=lq,
                   lk=lk, head_dim=kd)  # fmt: skip
        rows.append(row)
        if not gpu and impl != "pallas_gpu":
          row["status"] = "skipped: needs a GPU"
          continue
        cfg = pallas_gpu.config() if impl == "pallas_gpu" else None
        if impl == "pallas_mosaic":
          cfg = pallas_mosaic.config(interpret=False)
        args, g = _mode_args(arrays, mode), arrays["g"]
        try:
          with jax.default_matmul_precision("highest"):
            want, vjp = jax.vjp(jax.jit(_mode_fn("xla", mode, t)), *args)
            want_grads = vjp(g)
          got, vjp = jax.vjp(jax.jit(_mode_fn(impl, mode, t, cfg)), *args)
          grads = vjp(g)
          errs = [_rel(got, want)] + [_rel(a, b) for a, b in zip(grads, want_grads)]
          row.update(rel_out=errs[0], rel_grads=errs[1:], max_rel=max(errs))
          row["status"] = "pass" if max(errs) < NUMERIC_TOL[dtype_name] else "FAIL"
        except Exception as e:
          row["status"] = "error"
          row["error"] = first_line(e, 400)
        print(json.dumps(row), flush=True)
  return rows


def section_attention_speed(dry: bool, out: pathlib.Path, part: str) -> list:
  import jax
  import jax.numpy as jnp

  from kernels.attention.reference import apply_rope

  gpu = jax.default_backend() == "gpu"
  shapes = {"1.3b": (12, 32760, 1560), "14b": (40, 75600, 3600)}
  if dry:
    shapes = {"1.3b": (1, 96, 24), "14b": (2, 128, 40)}
  impls = part.split(",")
  kd, warmup, iters = 128, 1, 3 if not dry else 1
  rows = []

  def jax_cudnn(mode, t):
    """The baseline: cuDNN through jax on q/k rotated beforehand (RoPE not timed)."""
    sdpa = lambda q, k, v: jax.nn.dot_product_attention(q, k, v, implementation="cudnn")
    if mode == "self":
      return sdpa
    return lambda q, k, v, kr, vr: (
      sdpa(q, k, v).astype(jnp.float32) + sdpa(q, kr, vr).astype(jnp.float32)
    ).astype(q.dtype)

  for size, (heads, lq, lk) in shapes.items():
    arrays, t = _attention_inputs(heads, lq, lk, kd, jnp.bfloat16)
    for mode in ("hybrid", "self"):
      args = _mode_args(arrays, mode)
      lk_total = lq + (lk if mode == "hybrid" else 0)
      flops_fwd = 4 * heads * kd * lq * lk_total
      for impl in impls:
        if size == "14b" and not dry and (impl == "xla" or (impl, mode) == ("pallas_gpu", "self")):
          continue  # seconds per call: the fallback, and a row the hybrid one already tells
        if not gpu and impl in ("jax_cudnn", "cudnn", "pallas_mosaic"):
          continue
        row = dict(size=size, mode=mode, impl=impl, heads=heads, lq=lq, lk=lk, head_dim=kd,
                   dtype="bfloat16", flops_fwd=flops_fwd, flops_bwd=2.5 * flops_fwd)  # fmt: skip
        rows.append(row)
        try:
          if impl == "jax_cudnn":
            rot = dict(arrays)
            rot["q"] = apply_rope(arrays["q"], t["q_rope"])
            rot["k"] = apply_rope(arrays["k"], t["k_rope"])
            rot["k_ref"] = apply_rope(arrays["k_ref"], t["k_ref_rope"])
            fn, fargs = jax_cudnn(mode, t), _mode_args(rot, mode)
          else:
            fn, fargs = _mode_fn(impl, mode, t), args

          def fwd_bwd(*a, fn=fn):
            o, vjp = jax.vjp(fn, *a)
            return vjp(o)

          timed = _benchmark_script("attention_benchmark")._time  # median after warm-up
          t_fwd = timed(jax.jit(fn), fargs, warmup, iters)
          t_all = timed(jax.jit(fwd_bwd), fargs, warmup, iters)
          t_bwd = max(t_all - t_fwd, 1e-9)
          row.update(fwd_ms=t_fwd * 1e3, bwd_ms=t_bwd * 1e3,
                     fwd_tflops=flops_fwd / t_fwd / 1e12,
                     bwd_tflops=2.5 * flops_fwd / t_bwd / 1e12)  # fmt: skip
        except Exception as e:
          row["error"] = first_line(e, 400)
        print(json.dumps(row), flush=True)
  return rows


def _benchmark_script(script: str):
  """The module of benchmarks/<script>.py (benchmarks are scripts, not a package)."""
  import importlib.util

  if script not in sys.modules:
    spec = importlib.util.spec_from_file_location(script, ROOT / "benchmarks" / f"{script}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[script] = module
  return sys.modules[script]


def _run_script(script: str, argv: list[str], out: pathlib.Path, name: str):
  """Runs benchmarks/<script>.main(argv + ['--json', tmp]) in this process; returns its JSON."""
  path = out / f"{name}.part.json"
  _benchmark_script(script).main([*argv, "--json", str(path)])
  return json.loads(path.read_text())


def section_train_step(dry: bool, out: pathlib.Path, part: str = ""):
  argv = ["--model", "1.3b", "--buckets", "512", "--frames", "29", "--dtype", "bf16",
          "--remat", "full", "--attn", "cudnn", "--warmup", "1", "--steps", "3"]  # fmt: skip
  if dry:
    argv = ["--model", "tiny-small", "--buckets", "32", "--frames", "5", "--dtype", "fp32",
            "--remat", "none", "--attn", "xla", "--warmup", "1", "--steps", "1"]  # fmt: skip
  return _run_script("train_benchmark", argv, out, "train_step")


def section_denoise_step(dry: bool, out: pathlib.Path, part: str = ""):
  from o2a_jax.model import preset
  from o2a_jax.train import metrics

  argv = ["--preset", "1.3b", "--full", "--timed-steps", "2", "--passes", "3",
          "--attn-impl", "cudnn", "--no-vae"]  # fmt: skip
  if dry:
    argv = ["--preset", "1.3b", "--layers", "1", "--frames", "5", "--height", "32",
            "--width", "32", "--timed-steps", "1", "--text-len", "8", "--no-vae"]  # fmt: skip
  res = _run_script("inference_benchmark", argv, out, "denoise_step")
  for r in res:  # model FLOPs of one step: the three passes are one batched call
    cfg = preset(r["preset"])
    flops = metrics.denoiser_flops(
      cfg, batch=r["passes"], frames=r["frames"], height=r["height"], width=r["width"],
      text_len=512 if not dry else 8,
    )["total"]  # fmt: skip
    if dry:
      flops = None  # one block of a reduced model: the full preset's count does not apply
    r["model_tflop_per_step"] = flops / 1e12 if flops else None
    peak = metrics.peak_tflops()
    if flops and peak:
      r["tflops_per_s"] = flops / r["step_s"] / 1e12
      r["mfu"] = r["tflops_per_s"] / peak
  return res


def section_vae_decode(dry: bool, out: pathlib.Path, part: str = ""):
  argv = ["--only", "decode", "--frames", "81", "--height", "480", "--width", "832",
          "--dtype", "bf16", "--repeats", "2", "--torch", "off"]  # fmt: skip
  if dry:
    argv = ["--only", "decode", "--frames", "5", "--height", "32", "--width", "32",
            "--dtype", "fp32", "--repeats", "1", "--torch", "off"]  # fmt: skip
  return _run_script("vae_benchmark", argv, out, "vae_decode")


SECTION_FNS = {
  "env": section_env,
  "attention_numerics": section_attention_numerics,
  "attention_speed": section_attention_speed,
  "train_step": section_train_step,
  "denoise_step": section_denoise_step,
  "vae_decode": section_vae_decode,
}


# --- the driver -----------------------------------------------------------------------------


def _child(args) -> int:
  """One section part in this process: writes {"results": ...} or {"error": ...}."""
  out = pathlib.Path(args.section_out)
  try:
    results = SECTION_FNS[args.section](args.dry_run, out.parent, args.part)
    _write_json(out, {"results": results})
    return 0
  except BaseException as e:
    traceback.print_exc()
    _write_json(out, {"error": first_line(e, 400)})
    return 1


def _run_part(name, part, timeout, args, out, env, log) -> dict:
  """Runs one part in a child process under `timeout`; returns its entry (status, results)."""
  sec_json = out / f".{name}.{part or 'all'}.section.json"
  sec_json.unlink(missing_ok=True)
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--section", name, "--part", part,
         "--section-out", str(sec_json)] + (["--dry-run"] if args.dry_run else [])  # fmt: skip
  label = f"{name}/{part}" if part else name
  print(f"[gpu_suite] {label}: start (cap {timeout:.0f} s)", flush=True)
  log.write(f"\n===== {label} =====\n")
  log.flush()
  t0 = time.monotonic()
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          env=env, start_new_session=True)  # fmt: skip
  try:
    stdout, _ = proc.communicate(timeout=timeout)
    timed_out = False
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, 9)
    stdout, _ = proc.communicate()
    timed_out = True
  log.write(stdout or "")
  log.flush()
  sys.stdout.write(stdout or "")
  entry = {"cap_s": round(timeout), "wall_s": round(time.monotonic() - t0, 1)}
  body = json.loads(sec_json.read_text()) if sec_json.exists() else {}
  sec_json.unlink(missing_ok=True)
  if timed_out:
    entry.update(status="timeout", error=f"killed after {timeout:.0f} s")
  elif "results" in body and proc.returncode == 0:
    entry.update(status="ok", results=body["results"])
  else:
    entry.update(status="error", error=body.get("error") or f"exit {proc.returncode}, see log")
  print(f"[gpu_suite] {label}: {entry['status']} in {entry['wall_s']} s", flush=True)
  return entry


def _merge(parts, entries: dict) -> dict:
  """A section's entry from its parts' entries (a one-part section is that part's entry)."""
  if parts == ("",):
    return entries[""]
  statuses = [e["status"] for e in entries.values()]
  status = "ok" if statuses and all(x == "ok" for x in statuses) else "partial"
  if not any(x == "ok" for x in statuses):
    status = "error" if any(x in ("error", "timeout") for x in statuses) else "skipped"
  results = [row for e in entries.values() for row in e.get("results", [])]
  summary = {p: {k: v for k, v in e.items() if k != "results"} for p, e in entries.items()}
  return {"status": status, "parts": summary, "results": results}


def _gpu_present() -> bool:
  import jax

  return jax.default_backend() == "gpu"


def _git_commit() -> str | None:
  try:
    r = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                       text=True, timeout=10)  # fmt: skip
    return r.stdout.strip() or None
  except (OSError, subprocess.TimeoutExpired):
    return None


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument("--out", default=os.environ.get("OUT", "gpu_suite_out"),
                 help="folder for gpu_suite.json and gpu_suite.log (default: $OUT)")  # fmt: skip
  p.add_argument("--dry-run", action="store_true", help="tiny sizes; runs on a CPU (CI)")
  p.add_argument(
    "--budget", type=float, default=470.0, help="overall seconds; later parts are skipped"
  )
  p.add_argument("--only", default="", help="comma list of sections (default: all, in order)")
  p.add_argument("--section", choices=sorted(SECTION_FNS), help=argparse.SUPPRESS)
  p.add_argument("--section-out", help=argparse.SUPPRESS)
  p.add_argument("--part", default="", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.section:
    return _child(args)

  names = [n for n, _ in SECTIONS]
  only = [s for s in args.only.split(",") if s]
  for s in only:
    if s not in names:
      p.error(f"--only: unknown section {s!r}; choose from {', '.join(names)}")
  if not args.dry_run and not _gpu_present():
    print("gpu_suite: no GPU is visible to JAX (backend is not 'gpu'). The figures would say "
          "nothing about GPU speed; run it on a GPU machine, or use --dry-run to check the code "
          "on a CPU.", file=sys.stderr)  # fmt: skip
    return 2
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)
  json_path, log_path = out / "gpu_suite.json", out / "gpu_suite.log"
  t_start = time.monotonic()
  report = {
    "schema": SCHEMA,
    "dry_run": args.dry_run,
    "budget_s": args.budget,
    "git": _git_commit(),
    "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "sections": {},
  }
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
  if args.dry_run:
    env.setdefault("JAX_PLATFORMS", "cpu")
  with open(log_path, "a") as log:
    for name, part_caps in SECTIONS:
      if only and name not in only:
        continue
      entries = {}
      parts = tuple(part for part, _ in part_caps)
      for part, cap in part_caps:
        left = args.budget - (time.monotonic() - t_start)
        if left < MIN_START_S:
          entries[part] = {"status": "skipped", "error": f"budget: {left:.0f} s left"}
          print(f"[gpu_suite] {name}/{part}: skipped ({left:.0f} s of the budget left)")
          continue
        timeout = min(cap, left) if not args.dry_run else max(cap, left)
        entries[part] = _run_part(name, part, timeout, args, out, env, log)
        report["sections"][name] = _merge(parts, entries)
        report["wall_s"] = round(time.monotonic() - t_start, 1)
        _write_json(json_path, report)
      report["sections"][name] = _merge(parts, entries)
  for part in out.glob("*.part.json"):
    part.unlink()
  report["wall_s"] = round(time.monotonic() - t_start, 1)
  _write_json(json_path, report)
  print(f"[gpu_suite] wrote {json_path} and {log_path} in {report['wall_s']} s", flush=True)
  bad = [n for n, e in report["sections"].items() if e["status"] != "ok"]
  return 1 if bad and args.dry_run else 0


if __name__ == "__main__":
  sys.exit(main())
