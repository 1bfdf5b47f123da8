"""Helpers for `configs/*.py`: parsing `get_config(arg)` strings and building dataclasses.

`parse_arg("variant=1.3b,runlocal", variant="tiny", runlocal=False)` returns a ConfigDict with
the defaults overridden; values are cast to each default's type, a bare name sets a bool to
True, and unknown names raise KeyError naming the accepted ones.
"""

from __future__ import annotations

import dataclasses

import ml_collections as mlc

from o2a_jax.model.config import DenoiserConfig


def _cast(name: str, default, value: str):
  if isinstance(default, bool):
    if value.lower() in ("1", "true", "yes", ""):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"config arg {name}={value!r} is not a boolean")
  if default is None:
    return value
  try:
    return type(default)(value)
  except ValueError as e:
    raise ValueError(f"config arg {name}={value!r} is not a {type(default).__name__}") from e


def parse_arg(arg: str | None, **defaults) -> mlc.ConfigDict:
  """`k=v,k2` -> ConfigDict over `defaults`; a lone first token sets the first default."""
  out = dict(defaults)
  if arg:
    for i, token in enumerate(t for t in arg.split(",") if t):
      name, eq, value = token.partition("=")
      name = name.strip()
      if not eq and i == 0 and name not in defaults:
        name, value = next(iter(defaults)), token  # `get_config("1.3b")` means the variant
      elif not eq:
        value = ""
      if name not in defaults:
        raise KeyError(f"unknown config arg {name!r}; accepted: {sorted(defaults)}")
      out[name] = _cast(name, defaults[name], value.strip())
  return mlc.ConfigDict(out)


def from_section(cls, section, name: str, *, ignore: tuple[str, ...] = ()):
  """The frozen dataclass `cls` of the config section `config.<name>` (the ConfigDict stops
  here): unknown keys and missing required keys are named; keys in `ignore` belong elsewhere."""
  if section is None:
    raise ValueError(f"config.{name} is missing")
  given = {k: v for k, v in section.items() if k not in ignore}
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(given) - set(fields))
  missing = sorted(
    n
    for n, f in fields.items()
    if n not in given
    and f.default is dataclasses.MISSING
    and f.default_factory is dataclasses.MISSING
  )
  if unknown or missing:
    raise ValueError(
      f"config.{name}: unknown keys {unknown}, missing keys {missing}; accepted: {sorted(fields)}"
    )
  return cls(**given)


def denoiser_config(model: mlc.ConfigDict) -> DenoiserConfig:
  """The frozen DenoiserConfig of a `config.model` section."""
  return from_section(DenoiserConfig, model, "model")


def load_config_file(path, arg: str | None = None) -> mlc.ConfigDict:
  """`get_config(arg)` of the config file at `path` (configs are files, not a package)."""
  import importlib.util
  import pathlib

  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"config file {str(path)!r} does not exist")
  spec = importlib.util.spec_from_file_location(f"_o2a_config_{path.stem}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)
