"""The training loop: config, FLOP count, loss, checkpoints (resume, SIGKILL, other mesh, atomic),
SIGTERM, non-finite batches, TensorBoard, and the `o2a train` command.

One jitted step is compiled once per module (`configs/o2a.py:model=tiny,small`, 5 frames at 32x32,
global batch 8 on the 8 simulated devices, mesh 1x8 fsdp); runs reuse it with fresh copies of the
initial state. Subprocesses (`o2a train`) share compiled programs through a persistent
compilation cache in the module's temporary folder.
"""

import importlib.util
import json
import os
import pathlib
import shutil
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from o2a_jax import sharding
from o2a_jax.model.config import preset
from o2a_jax.model.denoiser import Denoiser
from o2a_jax.train import checkpoints as ckpt_lib
from o2a_jax.train import metrics, trainer
from o2a_jax.train import step as step_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "o2a.py"
ARG = "model=tiny,small,stage=2"


def get_config(arg: str = ARG):
  spec = importlib.util.spec_from_file_location("o2a_config", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


# Overrides shared by the in-process runs and the `o2a train` subprocesses (same program).
OVERRIDES = {
  "optim.lr": 1e-3,
  "optim.warmup_steps": 0,
  "data.global_batch": 8,
  "data.synthetic.num_samples": 16,
  "train.log_every": 1,
  "train.ckpt_every": 2,
  "train.keep_checkpoints": 3,
  "train.steps": 6,
}


def loop_config(**extra):
  c = get_config()
  for k, v in {**OVERRIDES, **extra}.items():
    node = c
    *parents, leaf = k.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = v
  return c


def flag_args(**extra) -> list[str]:
  return [f"--config.{k}={v}" for k, v in {**OVERRIDES, **extra}.items()]


def saved_steps(folder) -> list[int]:
  ckpts = ckpt_lib.Checkpoints(folder)
  try:
    return ckpts.all_steps()
  finally:
    ckpts.close()


def params_of(state) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(state.params)]


def assert_same_params(a, b):
  pa, pb = params_of(a), params_of(b)
  assert len(pa) == len(pb)
  for x, y in zip(pa, pb, strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
  """A persistent compilation cache for this module and its subprocesses."""
  path = tmp_path_factory.mktemp("jax_cache")
  names = (
    "jax_compilation_cache_dir",
    "jax_persistent_cache_min_compile_time_secs",
    "jax_persistent_cache_min_entry_size_bytes",
  )
  old = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", str(path))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
  yield path
  for n, v in old.items():
    jax.config.update(n, v)


@pytest.fixture(scope="module")
def built(cache_dir):
  """The module's one setup: state on the 1x8 mesh, the jitted step, and the initial state."""
  s = trainer.setup(loop_config())
  initial = jax.tree.map(jnp.copy, s.state)
  return s, initial


def fresh(built_):
  s, initial = built_
  s.state = jax.tree.map(jnp.copy, initial)
  return s


@pytest.fixture(scope="module")
def reference(built, tmp_path_factory):
  """An uninterrupted 6-step run (checkpoints at 2, 4, 6)."""
  workdir = tmp_path_factory.mktemp("reference")
  result = trainer.train(loop_config(), workdir, built=fresh(built), progress=False)
  return workdir, result


def subprocess_env(cache: pathlib.Path) -> dict:
  env = dict(os.environ)
  # The suite's XLA flags (tests/conftest.py): the same devices and the same code generation as
  # this process, so the subprocess's steps are bit-identical to the in-process reference.
  env["XLA_FLAGS"] = os.environ["XLA_FLAGS"]
  env["JAX_COMPILATION_CACHE_DIR"] = str(cache)
  env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  env["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
  env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
  return env


def o2a_train(workdir, *args) -> list[str]:
  return [
    sys.executable,
    "-m",
    "o2a_jax.cli",
    "train",
    "--config",
    f"{CONFIG}:{ARG}",
    "--workdir",
    str(workdir),
    "--noprogress",
    *args,
  ]


# --- config and FLOPs -------------------------------------------------------------------------


def test_config_args_stages_and_overrides():
  c = get_config("model=tiny,stage=2")
  assert c.stage == 2 and c.data.stage == 2 and c.model.num_layers == 3
  assert c.data.source == "synthetic" and c.model.prefix_frame and c.model.pose_branch
  assert get_config("1.3b").model.num_layers == 30  # a lone first token is the model
  assert get_config("variant=14b").model.num_heads == 40  # the older spelling
  c1 = get_config("model=tiny,stage=1")
  assert not c1.model.prefix_frame and not c1.model.pose_branch and c1.model.pose_layers == 0
  assert c1.data.only_ref and get_config("model=tiny,stage=3").data.buckets == "768_v2"
  c.train.remat = "full"  # a view of model.remat
  assert c.model.remat == "full"
  with pytest.raises(KeyError, match="stage"):
    get_config("model=tiny,stage=4")
  from o2a_jax.train import cli

  argv = [
    "o2a train",
    "--config",
    f"{CONFIG}:model=tiny,stage=3",
    "--workdir",
    "w",
    "--config.optim.lr=2e-5",
    "--config.train.mesh_shape=(2,4,1,1)",
  ]
  fv = cli._flag_values(argv)
  fv(argv)
  assert fv.config.optim.lr == 2e-5 and fv.config.stage == 3
  assert tuple(fv.config.mesh_shape) == (2, 4, 1, 1)  # the older name follows train.mesh_shape


def test_flop_count_matches_xla_cost_analysis():
  """The analytic count against XLA's HLO cost analysis of the tiny denoiser (blocks unrolled:
  XLA counts a scanned body once). XLA also counts element-wise work the analytic count leaves
  out, so analytic / XLA must lie in [0.95, 1.0]: measured 0.984 forward, 0.993 forward+backward."""
  cfg = preset("tiny", scan_layers=False)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: Denoiser(cfg, rngs=nnx.Rngs(0)))
  graph, state = nnx.split(abstract)
  b, f, h, w, s = 2, 5, 32, 32, 7
  t = (f - 1) // 4 + 1
  sds = jax.ShapeDtypeStruct
  args = (
    sds((b, t, h // 8, w // 8, 16), jnp.float32),
    sds((b,), jnp.float32),
    sds((b, s, cfg.text_dim), jnp.float32),
    sds((b, 1, h // 8, w // 8, 32), jnp.float32),
    sds((b, f, h, w, 3), jnp.float32),
    sds((b, 1, h, w, 3), jnp.float32),
  )

  def forward(state, *a):
    return jnp.sum(nnx.merge(graph, state)(*a) ** 2)

  xla_fwd = jax.jit(forward).lower(state, *args).cost_analysis()["flops"]
  xla_train = jax.jit(jax.grad(forward)).lower(state, *args).cost_analysis()["flops"]
  ours = metrics.denoiser_flops(cfg, batch=b, frames=f, height=h, width=w, text_len=s)["total"]
  assert 0.95 <= ours / xla_fwd <= 1.0, (ours, xla_fwd)
  train = metrics.train_step_flops(cfg, batch=b, frames=f, height=h, width=w, text_len=s)
  assert 0.95 <= train / xla_train <= 1.0, (train, xla_train)


# --- the loop ---------------------------------------------------------------------------------


def read_scalars(logdir: pathlib.Path) -> dict[str, list[float]]:
  """Scalars of the TFRecord event files (length, crc, Event proto, crc) in `logdir`."""
  from tensorboardX.proto import event_pb2

  out: dict[str, list[float]] = {}
  for path in sorted(logdir.glob("events.out.tfevents.*")):
    data = path.read_bytes()
    i = 0
    while i < len(data):
      (n,) = struct.unpack("<Q", data[i : i + 8])
      event = event_pb2.Event.FromString(data[i + 12 : i + 12 + n])
      i += 12 + n + 4
      for v in event.summary.value:
        if v.HasField("simple_value"):
          out.setdefault(v.tag, []).append(v.simple_value)
  return out


def test_loss_falls_metrics_and_checkpoints(reference):
  workdir, result = reference
  assert result.reason == "done" and result.step == 6
  losses = [r["loss"] for r in result.history]
  assert all(np.isfinite(losses))
  assert np.mean(losses[-2:]) < 0.95 * np.mean(losses[:2]), losses  # measured: 0.90
  assert int(result.state.step) == 6 and int(result.state.skipped) == 0
  scalars = read_scalars(workdir / "tb")
  for tag in ("loss", "lr", "grad_norm", "steps_per_s", "tokens_per_s"):
    assert tag in scalars, sorted(scalars)
  assert any(t.startswith("loss_") for t in scalars), sorted(scalars)  # the per-term losses
  np.testing.assert_allclose(scalars["loss"], losses, rtol=1e-6)
  assert saved_steps(workdir / "checkpoints") == [2, 4, 6]


def test_sigkill_then_resume_is_bit_identical(built, reference, cache_dir, tmp_path):
  """`o2a train` is killed (SIGKILL) once step 2's checkpoint is complete; resuming runs to step
  6 and ends with exactly the reference's parameters (data order included)."""
  _, ref = reference
  proc = subprocess.Popen(
    o2a_train(tmp_path, *flag_args(**{"train.steps": 1000})),
    env=subprocess_env(cache_dir),
    stdout=subprocess.DEVNULL,
    stderr=subprocess.PIPE,
  )
  ckpts = tmp_path / "checkpoints"
  deadline = time.time() + 240
  try:
    while not (ckpts / "2" / "_CHECKPOINT_METADATA").exists():
      assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
      assert time.time() < deadline, "no checkpoint at step 2 in time"
      time.sleep(0.2)
  finally:
    proc.send_signal(signal.SIGKILL)
    proc.wait()
  killed_at = max(saved_steps(ckpts))
  assert 2 <= killed_at <= 4, killed_at
  result = trainer.train(loop_config(), tmp_path, built=fresh(built), progress=False)
  assert result.step == 6 and result.reason == "done"
  assert result.history[0]["step"] == killed_at + 1
  assert_same_params(result.state, ref.state)
  for r, q in zip(result.history, ref.history[killed_at:], strict=True):
    assert r["loss"] == q["loss"]


def restore_on_2x4(built, reference, tmp_path):
  """Copies the reference's checkpoints 2 and 4 (plus a half-written 8) and restores the latest
  onto a 2x4 (data x fsdp) mesh; returns (workdir, restored, shardings, mesh)."""
  workdir, _ = reference
  work = tmp_path / "run"
  shutil.copytree(workdir / "checkpoints", work / "checkpoints")
  shutil.rmtree(work / "checkpoints" / "6")
  partial = work / "checkpoints" / "8.orbax-checkpoint-tmp-1234567"
  shutil.copytree(work / "checkpoints" / "4", partial)
  (partial / "_CHECKPOINT_METADATA").unlink()
  assert saved_steps(work / "checkpoints") == [2, 4]

  _, initial = built
  mesh = sharding.make_mesh((2, 4, 1, 1))
  shardings = step_lib.state_shardings(initial, mesh, trainer.rules(loop_config()))
  ckpts = ckpt_lib.Checkpoints(work / "checkpoints")
  restored = ckpts.restore(jax.device_put(jax.tree.map(jnp.copy, initial), shardings))
  saved = ckpts.restore(jax.tree.map(jnp.copy, initial), step=4)  # onto the 1x8 mesh
  ckpts.close()
  assert int(restored.step) == 4
  sharded = [x for x in jax.tree.leaves(restored.params) if x.sharding.spec != PartitionSpec()]
  assert sharded and all(x.sharding.mesh.shape["data"] == 2 for x in sharded)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(saved), strict=True):
    a, b = (
      jax.random.key_data(x) if jnp.issubdtype(x.dtype, jax.dtypes.prng_key) else x for x in (a, b)
    )
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  return work, restored, shardings, mesh


def test_checkpoint_atomic_and_restore_onto_other_mesh(built, reference, tmp_path):
  """A half-written step folder (Orbax's temporary name) is ignored; the step-4 checkpoint of the
  1x8 (fsdp) run restores onto a 2x4 (data x fsdp) mesh bit-exactly."""
  restore_on_2x4(built, reference, tmp_path)


@pytest.mark.slow
def test_run_continues_on_other_mesh(built, reference, tmp_path):
  """The run resumed from the 1x8 checkpoint on the 2x4 mesh ends where the 1x8 run does, up to
  float32 reduction order (another mesh sums in another order). Slow: a second compile."""
  _, ref = reference
  work, state, shardings, mesh = restore_on_2x4(built, reference, tmp_path)
  s, _ = built
  config = loop_config(**{"train.mesh_shape": (2, 4, 1, 1)})
  step_fn = jax.jit(
    step_lib.make_train_step(s.graphs, step_lib.step_config(config)),
    in_shardings=(shardings, trainer.batch_sharding(mesh)),
    out_shardings=(shardings, None),
    donate_argnums=0,
  )
  other = trainer.Setup(mesh, s.graphs, state, shardings, step_fn)
  result = trainer.train(config, work, built=other, progress=False)
  assert result.step == 6 and result.history[0]["step"] == 5
  for x, y in zip(params_of(result.state), params_of(ref.state), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
    [r["loss"] for r in result.history], [r["loss"] for r in ref.history[4:]], rtol=1e-4
  )


@pytest.mark.slow
@pytest.mark.parametrize(
  "strategy, mesh",
  [("allgather", (1, 4, 2, 1)), ("ulysses", (1, 4, 2, 1)), ("allgather", (1, 2, 2, 2))],
)
def test_context_parallel_training_equals_single_axis(built, reference, tmp_path, strategy, mesh):
  """Two steps with the tokens split over a context axis of 2 through the context-parallel
  attention wrappers (all-gather; Ulysses), and with heads over a tensor axis of 2 as well, give
  the 1x8 run's losses, gradient norms and parameter updates up to float32 order. (Before the
  conv encoders were pinned to a batch-only sharding, the (1, 2, 2, 2) gradient norm was sqrt(2)
  too large.) Slow: a compile each."""
  _, initial = built
  workdir, ref = reference
  config = loop_config(
    **{"train.mesh_shape": mesh, "train.context_parallel": strategy, "train.steps": 2}
  )
  s = trainer.setup(config)
  assert s.graphs.model_cfg.attn_impl == f"cp_{strategy}:xla"
  result = trainer.train(config, tmp_path, built=s, progress=False)
  assert result.step == 2
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(
      [r[key] for r in result.history], [r[key] for r in ref.history[:2]], rtol=1e-5
    )
  ckpts = ckpt_lib.Checkpoints(workdir / "checkpoints")
  try:
    at2 = ckpts.restore(jax.tree.map(jnp.copy, result.state), step=2)
  finally:
    ckpts.close()
  # Adam divides each update by the root of its squared gradient, so an element whose gradient
  # is near zero turns a float32 reduction-order difference into a visible one (measured: up to
  # 3e-5 on single elements); the update as a whole must agree.
  flat = lambda st: np.concatenate([x.ravel() for x in params_of(st)])
  d_cp, d_ref = flat(result.state) - flat(initial), flat(at2) - flat(initial)
  rel = np.linalg.norm(d_cp - d_ref) / np.linalg.norm(d_ref)
  print(f"context-parallel {strategy} on {mesh}: parameter update relative difference {rel:.2e}")
  assert rel < 1e-3, rel


def test_context_parallel_config_errors():
  mesh = sharding.make_mesh((1, 2, 4, 1))
  with pytest.raises(ValueError, match="ulysses"):  # 2 heads cannot split 4 ways
    trainer.check_context_parallel(loop_config(**{"train.context_parallel": "ulysses"}), mesh)
  with pytest.raises(ValueError, match="guidance passes"):
    trainer.check_context_parallel(loop_config(**{"train.sample_every": 5}), mesh)
  with pytest.raises(ValueError, match="tokens per latent frame"):
    trainer.check_tokens_divide(mesh, preset("tiny"), 48, 32)  # 3 x 2 = 6 tokens over 4
  trainer.check_tokens_divide(mesh, preset("tiny"), 32, 32)
  with pytest.raises(ValueError, match="tensor axis"):  # 2 heads over 4
    trainer.check_context_parallel(loop_config(), sharding.make_mesh((1, 1, 2, 4)))
  trainer.check_context_parallel(loop_config(), sharding.make_mesh((1, 2, 2, 2)))


def test_sharding_rules_from_config(built):
  """Parameter rules come from `config.sharding.rules`; activation rules are the model's."""
  s, initial = built
  config = loop_config()
  default = step_lib.state_shardings(initial, s.mesh, trainer.rules(config))
  specs = {x.spec for x in jax.tree.leaves(default)}
  assert PartitionSpec(None, "fsdp") in specs or PartitionSpec("fsdp") in specs, specs
  config.sharding.rules = tuple(
    (k, None if k == "embed" else v) for k, v in config.sharding.rules
  )  # no FSDP: every parameter replicated
  replicated = step_lib.state_shardings(initial, s.mesh, trainer.rules(config))
  assert all("fsdp" not in str(x.spec) for x in jax.tree.leaves(replicated))
  config.sharding.rules = tuple(
    (k, "tensor" if k == "act_tokens" else v) for k, v in config.sharding.rules
  )
  with pytest.raises(ValueError, match="activation axis 'act_tokens'"):
    trainer.rules(config)


def test_sigterm_saves_and_returns(built, reference, tmp_path, monkeypatch):
  _, ref = reference
  make = trainer.data_iterator

  class Terminating:
    """Delivers SIGTERM to this process while the loop fetches batch 3."""

    def __init__(self, it):
      self.it, self.n = it, 0

    def __next__(self):
      self.n += 1
      if self.n == 3:
        os.kill(os.getpid(), signal.SIGTERM)
      return next(self.it)

    def get_state(self):
      return self.it.get_state()

    def set_state(self, s):
      self.it.set_state(s)

  monkeypatch.setattr(trainer, "data_iterator", lambda c: Terminating(make(c)))
  result = trainer.train(loop_config(), tmp_path, built=fresh(built), progress=False)
  assert result.reason == "preempted" and result.step == 3
  assert saved_steps(tmp_path / "checkpoints") == [2, 3]
  assert signal.getsignal(signal.SIGTERM) is not None  # the handler was put back
  monkeypatch.setattr(trainer, "data_iterator", make)
  resumed = trainer.train(loop_config(), tmp_path, built=fresh(built), progress=False)
  assert_same_params(resumed.state, ref.state)


def test_non_finite_batches_stop_with_last_good_checkpoint(built, reference, tmp_path):
  """Batches from the third on are NaN: steps 3 and 4 are skipped, the run stops after
  `max_bad_steps` = 2 in a row without saving, and the latest checkpoint is step 2's."""
  config = loop_config(
    **{"data.synthetic.poison_from": 2, "train.max_bad_steps": 2, "train.ckpt_every": 1}
  )
  with pytest.raises(trainer.TrainingDiverged, match="2 non-finite steps in a row"):
    trainer.train(config, tmp_path, built=fresh(built), progress=False)
  assert saved_steps(tmp_path / "checkpoints") == [1, 2]
  _, initial = built
  states = []
  for folder in (tmp_path, reference[0]):
    ckpts = ckpt_lib.Checkpoints(folder / "checkpoints")
    states.append(ckpts.restore(jax.tree.map(jnp.copy, initial), step=2))
    ckpts.close()
  state, ref2 = states
  assert_same_params(state, ref2)
  assert int(state.skipped) == 0


def test_o2a_train_help():
  out = subprocess.run(
    [sys.executable, "-m", "o2a_jax.cli", "train", "--help"],
    capture_output=True,
    text=True,
    env=subprocess_env(pathlib.Path("/nonexistent")),
    check=True,
  )
  assert "--config" in out.stdout and "--workdir" in out.stdout
  bad = subprocess.run(
    [sys.executable, "-m", "o2a_jax.cli", "train", "--config", f"{CONFIG}:{ARG}"],
    capture_output=True,
    text=True,
    env=subprocess_env(pathlib.Path("/nonexistent")),
  )
  assert bad.returncode == 2 and "--workdir is required" in bad.stderr


@pytest.mark.slow
def test_sample_video_written(built, reference, tmp_path):
  """`train.sample_every`'s preview: the batch's first sample denoised and written as MP4."""
  _, ref = reference
  s, _ = built
  local = next(trainer.data_iterator(loop_config()))
  trainer.write_samples(loop_config(), s.graphs, ref.state, local, tmp_path, 6)
  from o2a_jax.io import video as video_io

  frames = video_io.read_video(tmp_path / "step_0000006.mp4")[0]
  assert frames.shape == (5, 32, 32, 3)


def test_corrupt_latest_checkpoint_falls_back(built, reference, tmp_path):
  """The newest checkpoint is damaged: resuming restores the one before it, says which step it
  skipped and why; when every checkpoint is damaged the error names them all."""
  workdir, _ = reference
  ckdir = tmp_path / "checkpoints"
  shutil.copytree(workdir / "checkpoints", ckdir)
  for f in (ckdir / "6" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"\0garbage" * 4)
  s, _ = built
  template = jax.tree.map(jnp.zeros_like, s.state)
  skipped = []
  ckpts = ckpt_lib.Checkpoints(ckdir)
  try:
    step, state = ckpts.restore_latest_good(template, log=skipped.append)
    want = ckpts.restore(template, step=4)
  finally:
    ckpts.close()
  assert step == 4
  assert len(skipped) == 1 and "step 6" in skipped[0] and "skipped" in skipped[0], skipped
  assert_same_params(state, want)
  for n in (2, 4):
    for f in (ckdir / str(n) / "state").rglob("*"):
      if f.is_file() and f.stat().st_size > 0:
        f.write_bytes(b"\0garbage" * 4)
  ckpts = ckpt_lib.Checkpoints(ckdir)
  try:
    with pytest.raises(
      ValueError, match=r"no checkpoint .* can be restored: step 6 .*step 4 .*step 2"
    ):
      ckpts.restore_latest_good(template)
  finally:
    ckpts.close()


def test_workdir_of_another_stage_is_refused(tmp_path):
  c = loop_config()
  trainer.check_same_run(c, None, tmp_path)  # nothing saved: fine
  trainer.check_same_run(c, json.loads(c.to_json()), tmp_path)  # the same run: fine
  saved = json.loads(c.to_json())
  saved["stage"] = 1
  with pytest.raises(ValueError, match=r"stage = 1, this config has 2; use another --workdir"):
    trainer.check_same_run(c, saved, tmp_path)


def test_convert_run_exports_a_full_run(reference, tmp_path):
  """`o2a convert run` on a full (not LoRA) run: the checkpoint's parameters, in the official
  layout, equal the run's final model's."""
  from o2a_jax.cli import main
  from o2a_jax.convert import official_state_dict
  from o2a_jax.io.safetensors import TensorSource

  workdir, ref = reference
  assert main(["convert", "run", str(workdir), str(tmp_path / "out")]) == 0
  want = official_state_dict(step_lib.merge_model(ref.graphs, ref.state))
  with TensorSource(tmp_path / "out") as src:
    assert set(src) == set(want)
    for k in want:
      np.testing.assert_array_equal(src[k], want[k], err_msg=k)
