"""Multi-host training: two CPU processes on localhost (`jax.distributed`, 4 devices each) train
the small tiny model together and end with exactly the parameters of one 8-device process.

Both runs are `o2a train` subprocesses with the same config and global batches (the synthetic
source gives every process its rows of the same global batch) on the same 1x8 (fsdp) mesh, so the
partitioned program is the same; only the collectives differ (in-process on one host, Gloo across
two), and Gloo sums the gradient shards in another order. The runs are therefore equal up to
float32 rounding, not bit for bit (measured: losses equal to ~1e-7 relative; parameters within
1.5e-6 absolute after 3 steps, on biases that start at zero, i.e. 0.15% of one Adam step).
Tolerance: losses 1e-5 relative; parameters |a - b| <= 1e-5 + 1e-5 |b|, where 1e-5 is 1% of one
Adam step (lr 1e-3 bounds each element's update). A different batch or data order would change
the first loss and move parameters by whole steps. Parameters are read back from each run's
step-3 checkpoint. Slow: three processes each build the model and compile.
"""

import os
import pathlib
import socket
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "o2a.py"
FLAGS = [
  f"--config={CONFIG}:model=tiny,small,stage=2",
  "--config.optim.lr=1e-3",
  "--config.optim.warmup_steps=0",
  "--config.data.global_batch=8",
  "--config.train.steps=3",
  "--config.train.ckpt_every=3",
  "--config.train.log_every=1",
  "--noprogress",
]


def run_train(workdir, devices: int, extra=(), *, process_id=None):
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  cmd = [sys.executable, "-m", "o2a_jax.cli", "train", f"--workdir={workdir}", *FLAGS, *extra]
  return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def logged_losses(workdir: pathlib.Path) -> list[float]:
  """The `loss` scalars of the run's TensorBoard events (TFRecord framing: length, crc, proto,
  crc)."""
  import struct

  from tensorboardX.proto import event_pb2

  out = []
  for path in sorted((workdir / "tb").glob("events.out.tfevents.*")):
    data, i = path.read_bytes(), 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      out += [v.simple_value for v in event.summary.value if v.tag == "loss"]
  return out


def saved_state(workdir: pathlib.Path, step: int) -> dict:
  path = workdir / "checkpoints" / str(step) / "state"
  with ocp.StandardCheckpointer() as ckpt:
    meta = ckpt.metadata(path).item_metadata.tree
    # Restore as host numpy arrays (no mesh needed, whatever mesh wrote the checkpoint).
    target = jax.tree.map(
      lambda m: ocp.RestoreArgs(restore_type=np.ndarray),
      meta,
      is_leaf=lambda x: hasattr(x, "shape"),
    )
    with ocp.PyTreeCheckpointer() as pytree:
      return pytree.restore(path, args=ocp.args.PyTreeRestore(restore_args=target))


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
  port = free_port()
  procs = [
    run_train(
      tmp_path / "two",
      4,
      [f"--coordinator_address=localhost:{port}", "--num_processes=2", f"--process_id={i}"],
    )
    for i in range(2)
  ]
  one = run_train(tmp_path / "one", 8)
  outputs = []
  for p in [*procs, one]:
    out, _ = p.communicate(timeout=1500)
    outputs.append(out.decode(errors="replace"))
    assert p.returncode == 0, outputs[-1][-4000:]
  assert "2 process(es), 8 cpu device(s)" in outputs[0]
  a, b = saved_state(tmp_path / "two", 3), saved_state(tmp_path / "one", 3)
  flat_a = dict(jax.tree_util.tree_flatten_with_path(a["params"])[0])
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b["params"])[0])
  assert flat_a.keys() == flat_b.keys() and flat_a
  worst = max(float(np.max(np.abs(flat_a[k] - flat_b[k]))) for k in flat_a)
  for k in flat_a:
    np.testing.assert_allclose(
      flat_a[k], flat_b[k], rtol=1e-5, atol=1e-5, err_msg=f"{jax.tree_util.keystr(k)} {worst}"
    )
  loss_a, loss_b = logged_losses(tmp_path / "two"), logged_losses(tmp_path / "one")
  assert len(loss_a) == len(loss_b) == 3
  np.testing.assert_allclose(loss_a, loss_b, rtol=1e-5)
  print(f"max |two - one| over parameters: {worst:.3g}; losses {loss_a} vs {loss_b}")
  assert int(a["step"]) == int(b["step"]) == 3
  # Both processes wrote their data-iterator position.
  data = tmp_path / "two" / "checkpoints" / "3" / "data"
  assert sorted(p.name for p in data.glob("process_*")) == [
    "process_0-of-2.json",
    "process_1-of-2.json",
  ]
