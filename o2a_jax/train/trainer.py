"""The training loop: mesh, sharded state, one jitted step, data, checkpoints, metrics, signals.

    result = train(config, workdir)       # what `o2a train` runs in every process

One `jax.jit` step with explicit in/out shardings over the (data, fsdp, context, tensor) mesh of
`config.train.mesh_shape`: parameters (and their Adam moments and EMA) sharded by their logical
axes, the batch over (data, fsdp), the state donated, called under the mesh (`jax.set_mesh`) so
the model's activation constraints apply. A `context` axis above 1 splits each clip's tokens over
it: attention then runs through the kernels' context-parallel wrappers (`attention_impl`,
`config.train.context_parallel`), the rest of the block by automatic partitioning of the token
axis. Each process feeds its own rows of every
global batch (`jax.make_array_from_process_local_data`); in a multi-process run every process
runs this same function after `jax.distributed.initialize` (see `cli.py`).

Resuming is automatic: when `workdir/checkpoints` holds a checkpoint, the latest is restored
(onto the current mesh, whatever mesh wrote it) with the data iterator's position, and the run
continues to `config.train.steps` (the checkpoint's step counts batches consumed, skipped ones
included). SIGTERM (preemption) saves a checkpoint at the current step and returns cleanly.
A run of `config.train.max_bad_steps` consecutive non-finite steps raises `TrainingDiverged`
without writing a checkpoint, so the last good one stays the latest. A step's metrics are read
from the device only after the next step is dispatched (one step in flight), except on steps that
checkpoint, sample or stop.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import pathlib
import signal
import threading
import time
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections as mlc
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from data_pipeline.batch import check_batch
from o2a_jax import config_lib, sharding
from o2a_jax.model import lora, quantize
from o2a_jax.sampling.guidance import Guidance
from o2a_jax.text.embeddings_file import read_embeddings
from o2a_jax.train import checkpoints as ckpt_lib
from o2a_jax.train import metrics as metrics_lib
from o2a_jax.train import step as step_lib
from o2a_jax.vae.strides import latent_frames, latent_shape

log = logging.getLogger(__name__)

# The guidance of the samples written every `train.sample_every` steps: the official defaults.
SAMPLE_GUIDANCE = Guidance()


class TrainingDiverged(RuntimeError):
  """Too many consecutive non-finite steps; the last good checkpoint is left as the latest."""


@dataclasses.dataclass
class TrainResult:
  """What a run ended with. `reason`: "done", "preempted" (SIGTERM) or "stopped" (stop_after)."""

  step: int
  state: step_lib.TrainState
  graphs: step_lib.TrainGraphs
  reason: str
  history: list[dict]  # per-step figures of this call (the last 10,000)


# --- construction -----------------------------------------------------------------------------


def rules(config: mlc.ConfigDict) -> tuple:
  """`config.sharding.rules` as a tuple table (logical name -> mesh axes).

  Parameter names (`embed`, `heads`, `mlp`, `layers`, `conv`) may map anywhere: they decide the
  parameter, optimizer-moment and EMA shardings. Activation names (`act_*`) are resolved inside
  the model by `o2a_jax.sharding.RULES` and must stay as that table has them.
  """
  table = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in config.sharding.rules)
  builtin = dict(sharding.RULES)
  for name, axes in table:
    if name.startswith("act_") and builtin.get(name, axes) != axes:
      raise ValueError(
        f"config.sharding.rules maps activation axis {name!r} to {axes!r}; activations follow "
        f"o2a_jax.sharding.RULES ({builtin[name]!r}), change only parameter names"
      )
  return table


def make_mesh(config: mlc.ConfigDict) -> jax.sharding.Mesh:
  rules(config)  # validated before any device work
  return sharding.make_mesh(tuple(config.train.mesh_shape))


def build_vae(config: mlc.ConfigDict):
  """The frozen float32 VAE: loaded from `config.vae.path`, or random (tests, benchmarks)."""
  from o2a_jax.vae import model as vae_model

  if config.vae.path:
    from o2a_jax.convert import load_vae

    return load_vae(config.vae.path, dtype=jnp.float32)
  cfg = vae_model.VAEConfig(
    base_dim=config.vae.base_dim,
    dim_mult=tuple(config.vae.dim_mult),
    num_res_blocks=config.vae.num_res_blocks,
    # Configs written before the field existed: the Wan2.1 pattern (VAEConfig's default).
    temperal_downsample=tuple(
      config.vae.get("temperal_downsample", vae_model.VAEConfig.temperal_downsample)
    ),
  )
  vae = vae_model.WanVAE(cfg, dtype=jnp.float32)
  return vae_model.randomize(vae, seed=config.vae.seed)


def _check_architecture(got, want, source: str) -> None:
  """The checkpoint's architecture must be the config's (numerics fields may differ)."""
  keys = ("num_heads", "head_dim", "num_layers", "ffn_dim", "text_dim", "ref_layers", "pose_layers")
  pairs = {k: (getattr(got, k), getattr(want, k)) for k in keys}
  bad = {k: v for k, v in pairs.items() if v[0] != v[1]}
  if bad:
    raise ValueError(
      f"init checkpoint {source} has a different architecture than config.model "
      f"(checkpoint, config): {bad}; pick the matching model= preset"
    )


def init_format(path: str) -> str:
  """What `path` holds: `native` (Orbax params/ + config/), or by its official key names
  `wan_t2v` (Wan2.1-T2V diffusers transformer: no extractor), `stage1` (a stage-1 export:
  extractor, no pose branch) or `official` (a full One-to-All state dict)."""
  p = pathlib.Path(path)
  if (p / "params").is_dir() and (p / "config").is_dir():
    return "native"
  from o2a_jax.io import safetensors as sio

  with sio.TensorSource(p) as src:
    keys = list(src.shapes())
  if not any(k.startswith("refextractor.") for k in keys):
    return "wan_t2v"
  if not any(k.startswith(("controlnet", "input_hint_block")) for k in keys):
    return "stage1"
  return "official"


def attention_impl(config: mlc.ConfigDict, mesh: jax.sharding.Mesh) -> str:
  """The model's attention implementation on `mesh`.

  `config.model.attn_impl` itself when the mesh's `context` axis is 1. Otherwise the tokens are
  split over `context`, and attention kernels (opaque to automatic partitioning) must see their
  shards explicitly: the implementation becomes the context-parallel wrapper
  (`config.train.context_parallel`: `allgather` or `ulysses`, kernels/attention/context_parallel.py)
  around `config.model.attn_impl`, registered as `cp_<strategy>:<impl>`.
  """
  impl = config.model.attn_impl
  if mesh.shape["context"] == 1:
    return impl
  from kernels.attention.context_parallel import register_context_parallel

  return register_context_parallel(impl, config.train.get("context_parallel", "allgather"))


def check_context_parallel(config: mlc.ConfigDict, mesh: jax.sharding.Mesh) -> None:
  """Clear errors, before any compilation, for heads the tensor axis cannot split and runs the
  context axis cannot split."""
  ctx, tp = mesh.shape["context"], mesh.shape["tensor"]
  heads = config.model.num_heads
  if heads % tp:
    raise ValueError(
      f"the {heads} heads do not split over the mesh's tensor axis of {tp}; choose a tensor "
      "axis that divides them"
    )
  if ctx == 1:
    return
  strategy = config.train.get("context_parallel", "allgather")
  if strategy == "ulysses" and (heads // tp) % ctx:
    raise ValueError(
      f"config.train.context_parallel = 'ulysses' splits the {heads // tp} heads of each tensor "
      f"shard over the context axis of {ctx}, which does not divide them; use 'allgather' or "
      "another mesh"
    )
  if config.train.sample_every:
    dp = mesh.shape["data"] * mesh.shape["fsdp"]
    passes = SAMPLE_GUIDANCE.passes
    if passes % dp:
      raise ValueError(
        f"config.train.sample_every with a context axis of {ctx}: the sampler's batch is its "
        f"{passes} guidance passes, which data x fsdp = {dp} does not divide; set "
        f"sample_every=0 or use a mesh whose data x fsdp divides {passes}"
      )


def check_tokens_divide(mesh: jax.sharding.Mesh, cfg, height: int, width: int) -> None:
  """The tokens of one latent frame must split evenly over the context axis."""
  ctx = mesh.shape["context"]
  per_frame = cfg.tokens_per_frame(height, width)
  if per_frame % ctx:
    raise ValueError(
      f"clips of {height}x{width} have {per_frame} tokens per latent frame (H/16 x W/16), which "
      f"the mesh's context axis of {ctx} does not divide; choose buckets whose token count it "
      "divides or a smaller context axis"
    )


def build_model(config: mlc.ConfigDict, *, attn_impl: str | None = None):
  """The denoiser of `config.model`, initialised per `config.init` (official initialisation).

  `init.checkpoint` empty: random (seeded by `config.seed`). Otherwise by `init.format` (`auto`
  detects it): `native` (an `o2a convert import` checkpoint), `wan_t2v` (the Wan2.1-T2V diffusers
  transformer -> the stage-1 model, extractor copied from the backbone), `stage1` (a stage-1
  export -> the stage-2 model, pose blocks copied from the backbone), `official` (a full
  One-to-All checkpoint: stage 2 -> 3, or a released model for fine-tuning), all through
  `o2a_jax.train.init` with strict key checks. `attn_impl` overrides `config.model.attn_impl`
  (the context-parallel wrapper of `attention_impl`).
  """
  from o2a_jax.model import build_denoiser
  from o2a_jax.train import init as init_lib

  cfg = config_lib.denoiser_config(config.model)
  if attn_impl is not None:
    cfg = dataclasses.replace(cfg, attn_impl=attn_impl)
  src = config.init.checkpoint
  if not src:
    return build_denoiser(cfg, seed=config.seed)
  if not pathlib.Path(src).exists():
    raise FileNotFoundError(f"config.init.checkpoint {src!r} does not exist")
  fmt = config.init.format if config.init.format != "auto" else init_format(src)
  if fmt == "native":
    from o2a_jax.checkpoint import load_native, read_config

    _check_architecture(read_config(src), cfg, src)
    numerics = ("dtype", "param_dtype", "attn_impl", "scan_layers", "remat")
    return load_native(src, **{k: getattr(cfg, k) for k in numerics})
  loaders = {
    "wan_t2v": (init_lib.stage1_from_t2v, 1),
    "stage1": (init_lib.stage2_from_stage1, 2),
    "official": (init_lib.from_checkpoint, None),
  }
  if fmt not in loaders:
    raise ValueError(
      f"config.init.format {fmt!r} is not one of auto, native, wan_t2v, stage1, official"
    )
  load, stage = loaders[fmt]
  if stage is not None and config.stage != stage:
    raise ValueError(
      f"config.init.checkpoint {src!r} is a {fmt} checkpoint, which initialises stage {stage}; "
      f"this config is stage {config.stage}"
    )
  return load(src, cfg, seed=config.seed)


def text_embeds(config: mlc.ConfigDict) -> np.ndarray:
  """The prompt embedding every sample gets (official: UMT5 of "" at length 226, official text
  conditioning).

  `config.text.embeds`: a `.npy` or single-tensor `.safetensors` file of shape (S, text_dim),
  e.g. the `o2a text embed` cache entry of the empty prompt at length 226. Empty: zeros of
  (`config.text.length`, text_dim) (smoke runs and tests).
  """
  dim = config.model.text_dim
  path = config.text.embeds
  if not path:
    return np.zeros((config.text.length, dim), np.float32)
  try:
    return read_embeddings(path, dim)["text"]
  except (ValueError, FileNotFoundError) as e:
    raise type(e)(f"config.text.embeds: {e}") from None


def data_iterator(config: mlc.ConfigDict) -> Iterator[dict]:
  """This process's iterator of per-process batches (with get_state/set_state)."""
  kw = dict(process_index=jax.process_index(), process_count=jax.process_count())
  if config.data.source == "synthetic":
    from o2a_jax.train import synthetic_data

    return synthetic_data.train_iterator(config.data, **kw)
  import data_pipeline

  return data_pipeline.train_iterator(config.data, **kw)


def batch_sharding(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(("data", "fsdp")))


def global_batch(local: dict, sharding_: NamedSharding) -> dict:
  """Process-local rows -> global arrays sharded over (data, fsdp)."""
  return {
    k: jax.make_array_from_process_local_data(sharding_, np.asarray(v)) for k, v in local.items()
  }


def checkpoint_skip(config: mlc.ConfigDict) -> tuple[str, ...]:
  """TrainState fields a run's checkpoints leave out: a LoRA run stores its adapters, their
  optimizer state and EMA, not the frozen base (rebuilt from config.init.checkpoint), the VAE or
  the text embedding."""
  return ("frozen", "vae", "text") if step_lib.lora_config(config).enabled else ()


@dataclasses.dataclass
class Setup:
  """The pieces of a run, built once (exposed for tests and the benchmark)."""

  mesh: jax.sharding.Mesh
  graphs: step_lib.TrainGraphs
  state: step_lib.TrainState
  shardings: object
  step_fn: Callable


def setup(config: mlc.ConfigDict, *, mesh: jax.sharding.Mesh | None = None) -> Setup:
  """Builds the mesh, model, VAE, sharded train state and the jitted step."""
  step_config = step_lib.step_config(config)  # typed and checked before any device work
  mesh = mesh or make_mesh(config)
  check_context_parallel(config, mesh)
  with jax.set_mesh(mesh):
    model = build_model(config, attn_impl=attention_impl(config, mesh))
    adapters = step_lib.lora_config(config)
    if adapters.enabled:
      if adapters.base_int8:
        quantize.quantize(model)
      paths = adapters.attach(model, seed=config.seed)
      log.info(
        "LoRA rank %d on %d layers: %d adapter parameters train, the base is frozen%s",
        adapters.rank, len(paths), lora.count(model), " (int8)" if adapters.base_int8 else "",
      )  # fmt: skip
    vae = build_vae(config)
    graphs, state = step_lib.init_train_state(
      model, vae, step_config, seed=config.seed, text_embeds=text_embeds(config)
    )
    del model, vae
    shardings = step_lib.state_shardings(state, mesh, rules(config))
    state = jax.device_put(state, shardings)
  bsh = batch_sharding(mesh)
  step_fn = jax.jit(
    step_lib.make_train_step(graphs, step_config),
    in_shardings=(shardings, bsh),
    out_shardings=(shardings, None),
    donate_argnums=0,
  )
  return Setup(mesh, graphs, state, shardings, step_fn)


# --- signals ----------------------------------------------------------------------------------


class _Preemption:
  """SIGTERM sets a flag the loop polls after each step (main thread only)."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
    return False

  def agreed(self) -> bool:
    """True when any process got SIGTERM (all processes must checkpoint together)."""
    if jax.process_count() == 1:
      return self.requested
    flags = multihost_utils.process_allgather(np.int32(self.requested))
    return bool(np.any(flags))


# --- the loop ---------------------------------------------------------------------------------


def check_same_run(config: mlc.ConfigDict, saved: dict | None, workdir) -> None:
  """Refuses to resume a workdir whose checkpoints belong to another stage or model."""
  if not saved:
    return
  for key, now, then in (
    ("stage", config.stage, saved.get("stage")),
    ("model.num_layers", config.model.num_layers, saved.get("model", {}).get("num_layers")),
    ("model.num_heads", config.model.num_heads, saved.get("model", {}).get("num_heads")),
  ):
    if then is not None and then != now:
      raise ValueError(
        f"--workdir {str(workdir)!r} holds checkpoints of a run with {key} = {then}, this config "
        f"has {now}; use another --workdir (or move its checkpoints/ away)"
      )


def _denoiser_cfg(config):
  return config_lib.denoiser_config(config.model)


def train(
  config: mlc.ConfigDict,
  workdir: str,
  *,
  stop_after: int | None = None,
  progress: bool = True,
  built: Setup | None = None,
) -> TrainResult:
  """Trains to `config.train.steps` (resuming from `workdir/checkpoints` when present).

  Args:
    config: the run config (`configs/o2a.py`).
    workdir: checkpoints, TensorBoard events (`tb/`) and samples (`samples/`) go here.
    stop_after: stop (with a checkpoint) after this many steps of this call (tests).
    progress: show the tqdm bar (process 0 only).
    built: a `setup(config)` result to reuse (tests; its state is consumed).
  """
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  tcfg = config.train
  primary = jax.process_index() == 0
  s = built or setup(config)
  mesh, state, step_fn = s.mesh, s.state, s.step_fn
  bsh = batch_sharding(mesh)
  n_batch = mesh.shape["data"] * mesh.shape["fsdp"]
  if config.data.global_batch % n_batch:
    raise ValueError(
      f"config.data.global_batch = {config.data.global_batch} must be divisible by the mesh's "
      f"data x fsdp = {n_batch} devices"
    )

  data = data_iterator(config)
  ckpts = ckpt_lib.Checkpoints(
    workdir / "checkpoints",
    keep=tcfg.keep_checkpoints,
    async_save=tcfg.async_checkpoint,
    skip=checkpoint_skip(config),
  )
  writer = metrics_lib.Writer(workdir / "tb", enabled=primary)
  latest = ckpts.latest_step()
  if latest is not None:
    check_same_run(config, ckpts.saved_config(latest), workdir)
  t0 = time.perf_counter()
  start, state = ckpts.restore_latest_good(state, data, log=log.warning)
  if start is not None:
    log.info("restored step %d from %s in %.1f s", start, ckpts.directory, time.perf_counter() - t0)
  start = start or 0
  if primary and start == 0:
    writer.text(0, "config", "```\n" + str(config) + "\n```")

  cfg = _denoiser_cfg(config)
  peak = tcfg.peak_tflops or metrics_lib.peak_tflops()
  flops_cache: dict = {}
  history: collections.deque = collections.deque(maxlen=10_000)  # the last steps' figures
  reason = "done"
  it = start
  window_t, window_n = None, 0
  bar = tqdm(
    total=tcfg.steps, initial=start, disable=not (progress and primary), desc="train", unit="step"
  )

  def finish(step: int, m: dict, shape: tuple[int, int, int, int]) -> int:
    """Reads step `step`'s metrics (waiting for it), logs them; returns its `bad_in_row`."""
    nonlocal window_t, window_n
    rec = {k: float(v) for k, v in jax.device_get(m).items()}
    bad = int(rec["bad_in_row"])
    now = time.perf_counter()
    if window_t is None:  # the first step compiles; rates start after it
      window_t, window_n = now, 0
    else:
      window_n += 1
    if shape not in flops_cache:
      gb, f, h, w = shape
      flops_cache[shape] = metrics_lib.train_step_flops(
        cfg, batch=gb, frames=f, height=h, width=w, text_len=state.text.shape[1]
      )
    rec["step"] = step
    if window_n:
      gb, f, h, w = shape
      sps = window_n / (now - window_t)
      rec["steps_per_s"] = sps
      rec["tokens_per_s"] = sps * gb * latent_frames(f) * cfg.tokens_per_frame(h, w)
      if peak:
        rec["mfu"] = sps * flops_cache[shape] / (jax.device_count() * peak * 1e12)
    history.append(rec)
    bar.update(1)
    if step % tcfg.log_every == 0 or step == tcfg.steps:
      bar.set_postfix(metrics_lib.postfix(rec))
      writer.scalars(step, {k: v for k, v in rec.items() if k != "step"})
      window_t, window_n = now, 0
    if bad >= tcfg.max_bad_steps:
      last = ckpts.latest_step()
      raise TrainingDiverged(
        f"{bad} non-finite steps in a row (train.max_bad_steps = {tcfg.max_bad_steps}) at "
        f"step {step}; stopped without saving. The last good checkpoint is step {last} in "
        f"{ckpts.directory}. Check the data and the learning rate, then resume."
      )
    return bad

  # One step stays in flight: step i's metrics are read only after step i + 1 is dispatched, so
  # the host never waits for the device between steps (reading them at once would, every step).
  # Steps that checkpoint, sample or stop are read at once, since what follows needs them; a
  # divergence is therefore noticed at most one step late, and that step is never saved.
  pending = None  # (step, metrics, shape) of the step in flight
  try:
    with _Preemption() as preempt:
      while it < tcfg.steps:
        local = next(data)
        b, f, h, w = check_batch(local)
        check_tokens_divide(mesh, cfg, h, w)  # every batch: buckets differ in size
        batch = global_batch(local, bsh)
        # Under the mesh, the model's activation constraints and the context-parallel attention
        # wrappers see it (outside it they are no-ops or fail).
        with jax.set_mesh(mesh):
          state, m = step_fn(state, batch)
        it += 1
        if pending is not None:
          finish(*pending)
        pending = (it, m, (b * jax.process_count(), f, h, w))
        sample = bool(tcfg.sample_every) and it % tcfg.sample_every == 0
        save_due = it % tcfg.ckpt_every == 0 or it == tcfg.steps
        stop = stop_after is not None and it - start >= stop_after
        if preempt.agreed():
          reason = "preempted"
        elif stop:
          reason = "stopped"
        if not (sample or save_due or reason != "done"):
          continue
        bad = finish(*pending)
        pending = None
        if sample:
          with jax.set_mesh(mesh):
            write_samples(config, s.graphs, state, local, workdir / "samples", it)
        if reason != "done" or (bad == 0 and save_due):
          ckpts.save(it, state, data, config=config, force=True)
        if reason != "done":
          break
    ckpts.wait()
  finally:
    bar.close()
    writer.close()
    ckpts.close()
  return TrainResult(it, state, s.graphs, reason, list(history))


def write_samples(config, graphs, state, local: dict, folder: pathlib.Path, step: int) -> None:
  """A cheap preview: the first sample of the batch denoised in a few steps, as an MP4."""
  from flax import nnx

  from o2a_jax.io import video as video_io
  from o2a_jax.sampling import chunk as pipeline

  if jax.process_count() > 1:
    # Every process must run the sampler on the same inputs: process 0's first sample.
    first = {k: np.asarray(v[:1]) for k, v in local.items()}
    local = multihost_utils.broadcast_one_to_all(first)
  model = step_lib.merge_model(graphs, state)
  vae = nnx.merge(graphs.vae, state.vae)
  f, h, w = local["video"].shape[1:4]
  cfg = model.cfg
  key = jax.random.key(step)
  noise = jax.random.normal(
    key, latent_shape(f, h, w, vae.cfg.spatial_factor)[:3] + (cfg.in_channels,)
  )
  text = state.text[0]
  ref = np.asarray(local["ref_image"][0, 0])
  frames = pipeline.generate_chunk(
    model,
    vae,
    video_io.to_uint8(ref[None])[0],
    np.asarray(local["ref_mask"][0, 0, ..., 0]),
    np.asarray(local["pose_video"][0]),
    np.asarray(local["ref_pose"][0]),
    text,
    text,
    noise,
    steps=config.train.sample_steps,
    image_guidance=SAMPLE_GUIDANCE.image,
    pose_guidance=SAMPLE_GUIDANCE.pose,
  )
  if jax.process_index() == 0:
    folder.mkdir(parents=True, exist_ok=True)
    video_io.write_video(folder / f"step_{step:07d}.mp4", video_io.to_uint8(np.asarray(frames)))
