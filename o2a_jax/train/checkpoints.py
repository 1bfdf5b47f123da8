"""Training checkpoints: Orbax CheckpointManager (async) with the train state and data position.

Layout of `workdir/checkpoints/<step>/` (Orbax writes each step into a temporary folder and
renames it when complete, so a half-written step is never listed nor restored):
  state/    every array of the TrainState (params, frozen, vae, opt_state, rng, ema, counters),
            as a nested dict keyed by the pytree path, PRNG keys stored as their key data
  data/     the data iterator state, one `process_<i>-of-<n>.json` per process (Grain's handler)
  config/   the run config as JSON (for reading a run back; restore never depends on it)
A manager built with `skip` leaves those TrainState fields out (LoRA runs: the frozen base, the
VAE and the text embedding) and restores them from the template.

Restoring takes a template state whose leaves carry the target shardings (built on the current
mesh), so a checkpoint written on one mesh shape restores onto another: each process reads only
its own shards.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

from o2a_jax.io.error_text import first_line

# --- state <-> nested dict ---------------------------------------------------------------------


def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  raise TypeError(f"unsupported pytree path element {k!r}")


def _is_key(x) -> bool:
  return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _nested(state) -> tuple[dict, list[tuple[str, ...]]]:
  """The leaves of `state` as a nested dict keyed by path (keys as their raw key data)."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(state)
  out: dict = {}
  paths = []
  for path, leaf in leaves:
    names = tuple(_key_name(k) for k in path)
    paths.append(names)
    node = out
    for n in names[:-1]:
      node = node.setdefault(n, {})
    if names[-1] in node:
      raise ValueError(f"duplicate checkpoint path {'/'.join(names)}")
    node[names[-1]] = jax.random.key_data(leaf) if _is_key(leaf) else leaf
  return out, paths


def _abstract(x):
  """ShapeDtypeStruct of an array (or of its key data), keeping its sharding."""
  if isinstance(x, jax.ShapeDtypeStruct):
    if _is_key(x):
      raise ValueError("abstract PRNG-key leaves are not supported; pass a concrete template")
    return x
  if _is_key(x):
    data = jax.random.key_data(x)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=data.sharding)
  return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)


# --- data iterator state ----------------------------------------------------------------------


class _StateSnapshot:
  """What Grain's checkpoint handler saves: the iterator state taken when `save` was called.

  Async saves finish in a background thread while the loop has already moved the iterator on, so
  the handler must see a snapshot, not the live iterator.
  """

  def __init__(self, state):
    self._bytes = state if isinstance(state, bytes) else json.dumps(state).encode()

  def get_state(self) -> bytes:
    return self._bytes


class _StateReceiver:
  """Receives the saved state from Grain's handler (which then calls `start_prefetch`)."""

  state: bytes | None = None

  def set_state(self, state: bytes) -> None:
    self.state = state

  def start_prefetch(self) -> None:
    pass


def _set_iterator_state(iterator, raw: bytes) -> None:
  current = iterator.get_state()
  iterator.set_state(raw if isinstance(current, bytes) else json.loads(raw))


# --- the manager ------------------------------------------------------------------------------


class Checkpoints:
  """`workdir/checkpoints`: keep the last `keep` steps; saves are asynchronous by default."""

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    keep: int = 2,
    async_save: bool = True,
    skip: tuple[str, ...] = (),
  ):
    """`skip`: top-level TrainState fields not written (restore takes them from the template)."""
    self.skip = tuple(skip)
    if keep < 1:
      raise ValueError(f"train.keep_checkpoints must be >= 1, got {keep}")
    self.directory = pathlib.Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(
      max_to_keep=keep, enable_async_checkpointing=async_save, create=True
    )
    self._manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
        "config": ocp.JsonCheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator, *, config=None, force: bool = False) -> bool:
    """Starts saving `state` and the iterator position at `step`; returns once arrays are
    copied off the devices (the writes continue in the background)."""
    nested, _ = _nested(state)
    for name in self.skip:
      nested.pop(name, None)
    items = dict(
      state=ocp.args.StandardSave(nested),
      data=grain.checkpoint.CheckpointSave(_StateSnapshot(data_iterator.get_state())),
    )
    if config is not None:
      items["config"] = ocp.args.JsonSave(json.loads(config.to_json()))
    return self._manager.save(int(step), args=ocp.args.Composite(**items), force=force)

  def restore(self, template, data_iterator=None, *, step: int | None = None) -> Any:
    """Restores the state at `step` (default: the latest) into `template`'s structure.

    `template`'s leaves (arrays or ShapeDtypeStructs) give shape, dtype and target sharding;
    `data_iterator`, when given, is moved to the saved position.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    leaves, treedef = jax.tree_util.tree_flatten(template)
    nested_target, paths = _nested(jax.tree.unflatten(treedef, [_abstract(x) for x in leaves]))
    for name in self.skip:
      nested_target.pop(name, None)
    items = dict(state=ocp.args.StandardRestore(nested_target))
    receiver = _StateReceiver()
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(receiver)
    restored = self._manager.restore(int(step), args=ocp.args.Composite(**items))
    out = []
    for names, leaf in zip(paths, leaves, strict=True):
      if names[0] in self.skip:  # not stored: the template's value
        out.append(leaf)
        continue
      node = restored["state"]
      for n in names:
        node = node[n]
      if _is_key(leaf):
        node = jax.random.wrap_key_data(node, impl=jax.random.key_impl(leaf))
      out.append(node)
    if data_iterator is not None:
      _set_iterator_state(data_iterator, receiver.state)
    return jax.tree.unflatten(treedef, out)

  def saved_config(self, step: int) -> dict | None:
    """The config saved with `step` (None where it was saved without one or is unreadable)."""
    try:
      restored = self._manager.restore(
        int(step), args=ocp.args.Composite(config=ocp.args.JsonRestore())
      )
      return dict(restored["config"])
    except Exception:  # an unreadable config is reported by restore_latest_good
      return None

  def restore_latest_good(self, template, data_iterator=None, *, log=None):
    """Restores the newest checkpoint that reads back, skipping (and reporting) corrupt ones.

    Returns (step, state), or (None, template) when there is no checkpoint. Raises ValueError
    naming every step when none of them can be restored.
    """
    failures = []
    for step in sorted(self.all_steps(), reverse=True):
      try:
        return step, self.restore(template, data_iterator, step=step)
      except (KeyboardInterrupt, SystemExit):
        raise
      except Exception as e:
        reason = first_line(e)
        failures.append(f"step {step} ({reason})")
        if log is not None:
          log(f"checkpoint step {step} in {self.directory} is unreadable, skipped: {reason}")
    if failures:
      raise ValueError(
        f"no checkpoint in {self.directory} can be restored: {'; '.join(failures)}; move the "
        "folder away to start afresh"
      )
    return None, template

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
