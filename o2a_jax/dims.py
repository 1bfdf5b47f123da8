"""The dimension alphabet, held: shape annotations that the test suite checks on every call.

The alphabet: B batch, F pixel frames, T latent frames, H/W height/width (lower case h/w: the latent
grid), C channels, L tokens, S context tokens, D width, N heads, K head dim, M MLP hidden.

    @dims(latents="B T h w C", timestep="B", returns="B T h w C")
    def __call__(self, latents, timestep, ...): ...

A spec is space-separated dimensions: a name binds to one size across all the arguments and the
result of one call, a number must match exactly, `_` matches any size. Arguments that are None are
not checked, nor results that are not arrays (tuples, dicts). The check costs a few microseconds of
Python per call, so it runs only when `O2A_CHECK_DIMS=1` is set before `o2a_jax` is imported (the
test suite's conftest sets it); otherwise the decorator only records the specs on the function
(`fn.__dims__`).
"""

from __future__ import annotations

import functools
import inspect
import os

ENABLED = os.environ.get("O2A_CHECK_DIMS") == "1"


class DimsError(ValueError):
  """An array whose shape breaks its function's dimension annotation."""


def _match(fn, what: str, value, spec: str, bound: dict) -> None:
  shape = getattr(value, "shape", None)
  if shape is None:
    return
  names = spec.split()
  if len(shape) != len(names):
    raise DimsError(f"{fn}: {what} has shape {tuple(shape)}; expected ({spec})")
  for name, size in zip(names, shape):
    if name == "_":
      continue
    if name.isdigit():
      if int(name) != size:
        raise DimsError(f"{fn}: {what} has shape {tuple(shape)}; expected ({spec})")
      continue
    first = bound.setdefault(name, (size, what))
    if first[0] != size:
      raise DimsError(
        f"{fn}: {what} has {name} = {size} (shape {tuple(shape)}, dims {spec}), but {first[1]} "
        f"has {name} = {first[0]}"
      )


def dims(returns: str | None = None, **specs: str):
  """Annotates a function's array arguments (and result) with dimension specs."""

  def decorate(fn):
    fn.__dims__ = dict(specs, returns=returns)
    if not ENABLED:
      return fn
    signature = inspect.signature(fn)
    unknown = set(specs) - set(signature.parameters)
    if unknown:
      raise TypeError(f"{fn.__qualname__}: dims for unknown arguments {sorted(unknown)}")

    @functools.wraps(fn)
    def checked(*args, **kwargs):
      call = signature.bind(*args, **kwargs)
      bound: dict = {}
      for name, spec in specs.items():
        if call.arguments.get(name) is not None:
          _match(fn.__qualname__, name, call.arguments[name], spec, bound)
      out = fn(*args, **kwargs)
      if returns is not None:
        _match(fn.__qualname__, "the result", out, returns, bound)
      return out

    return checked

  return decorate
