"""Peak host memory and time of `o2a convert import` / `export` on a synthetic full-size model.

Writes a synthetic official checkpoint (random values, official keys and shapes, 5 GiB shards)
for a preset, then runs import (official -> native Orbax) and export (native -> official) each
in a fresh subprocess that reports its own peak RSS (ru_maxrss, which includes file pages
the kernel can reclaim) and its peak anonymous memory (RssAnon, sampled every 50 ms),
verifies that the exported tensors are bit-identical to the synthetic source, and prints and
writes the figures as JSON.

  python benchmarks/convert_benchmark.py --preset 1.3b --workdir /tmp/o2a_convert_bench
"""

from __future__ import annotations

import argparse
import json
import pathlib
import shutil
import subprocess
import sys
import time

import numpy as np

_CHILD = r"""
import json, resource, sys, threading, time
from o2a_jax.convert import native

peak = {"anon": 0}
def sample():  # peak anonymous memory: what cannot be reclaimed by dropping file pages
  while True:
    for line in open("/proc/self/status"):
      if line.startswith("RssAnon:"):
        peak["anon"] = max(peak["anon"], int(line.split()[1]))
    time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
t0 = time.perf_counter()
if sys.argv[1] == "import":
  native.import_official(sys.argv[2], sys.argv[3], dtype=sys.argv[4])
else:
  native.export_native(sys.argv[2], sys.argv[3])
print(json.dumps({"seconds": time.perf_counter() - t0,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
                  "peak_anon_gib": peak["anon"] / 2**20}))
"""


def write_synthetic(path: pathlib.Path, preset: str, dtype: str) -> tuple[int, int]:
  from o2a_jax.convert import official_shapes
  from o2a_jax.io import safetensors as sio

  shapes = official_shapes(preset)
  np_dtype = np.dtype(sio._DTYPES["BF16" if dtype == "bfloat16" else "F32"])
  items = [(k, np_dtype, s) for k, s in shapes.items()]
  shards = sio.plan_shards(items, 5 * 2**30)
  path.mkdir(parents=True)
  for i, shard in enumerate(shards):
    name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
    sio.write_file(path / name, shard, lambda k: _values(k, shapes[k], np_dtype))
  return len(items), sum(int(np.prod(s)) for s in shapes.values())


def _values(key: str, shape, dtype) -> np.ndarray:
  rng = np.random.default_rng(abs(hash(key)) % 2**32)
  return rng.random(shape, dtype=np.float32).astype(dtype)


def run_child(*argv) -> dict:
  out = subprocess.run([sys.executable, "-c", _CHILD, *argv], capture_output=True, text=True)
  if out.returncode:
    raise SystemExit(f"{argv[0]} failed (exit {out.returncode}):\n{out.stderr[-4000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def verify(src: pathlib.Path, exported: pathlib.Path) -> int:
  from o2a_jax.io import safetensors as sio

  with sio.TensorSource(src) as a, sio.TensorSource(exported) as b:
    if set(a) != set(b):
      raise SystemExit("exported key set differs from the source")
    for k in a:
      if a[k].tobytes() != b[k].tobytes():
        raise SystemExit(f"tensor {k} differs after import + export")
    return len(a)


def main() -> None:
  p = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--preset", default="1.3b", choices=["tiny", "1.3b", "14b"])
  p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  p.add_argument("--workdir", required=True, help="scratch folder (needs ~4x the model size)")
  p.add_argument("--json", default=None, help="where to write the results (default: print only)")
  p.add_argument("--keep", action="store_true", help="keep the written checkpoints")
  args = p.parse_args()

  work = pathlib.Path(args.workdir)
  if work.exists():
    raise SystemExit(f"{work} exists; give a new --workdir")
  try:
    t0 = time.perf_counter()
    n, values = write_synthetic(work / "official", args.preset, args.dtype)
    size = sum(f.stat().st_size for f in (work / "official").glob("*.safetensors"))
    result = {
      "preset": args.preset,
      "dtype": args.dtype,
      "tensors": n,
      "values": values,
      "checkpoint_gib": size / 2**30,
      "write_seconds": time.perf_counter() - t0,
    }
    result["import"] = run_child("import", str(work / "official"), str(work / "native"), args.dtype)
    result["export"] = run_child("export", str(work / "native"), str(work / "exported"))
    result["verified_bit_identical_tensors"] = verify(work / "official", work / "exported")
  finally:
    if not args.keep:
      shutil.rmtree(work, ignore_errors=True)
  print(json.dumps(result, indent=2))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
