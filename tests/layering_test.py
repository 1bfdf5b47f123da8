"""The house's layering, enforced: a core that imports nothing above it, apps on top, the toy aside.

Every `import` in the packages is read from the source (module level and inside functions
alike), so a lazy import cannot hide an arrow that points the wrong way.

- `kernels` imports nothing of the project.
- The core (`o2a_jax.{sharding, layers, model, vae, text, io, sampling, pose, checkpoint}`)
  imports only the core and `kernels`.
- Apps (`data_pipeline`, `o2a_jax.{train, inference, convert, cli_types, config_lib}`) import
  the core and each other, never the toy.
- The toy (`o2a_jax.puppet`) may import anything; only the entry points import it: the `o2a`
  dispatcher (`o2a_jax.cli`, which mounts `o2a demo`) and the config files.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("o2a_jax", "kernels", "data_pipeline")
CORE = {
  "o2a_jax",  # the package's own __init__ (no imports)
  "o2a_jax.sharding",
  "o2a_jax.dims",
  "o2a_jax.layers",
  "o2a_jax.model",
  "o2a_jax.vae",
  "o2a_jax.text",
  "o2a_jax.io",
  "o2a_jax.sampling",
  "o2a_jax.pose",
  "o2a_jax.checkpoint",
  "o2a_jax.metrics",
  "o2a_jax.pipeline",  # the contract's name for the sampler's chunk call (an alias)
}
APPS = {
  "data_pipeline",
  "o2a_jax.train",
  "o2a_jax.inference",
  "o2a_jax.convert",
  "o2a_jax.evaluate",
  "o2a_jax.cli_types",
  "o2a_jax.config_lib",
}
TOY = "o2a_jax.puppet"
ENTRY_POINTS = {"o2a_jax.cli"}


def _module_name(path: pathlib.Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _imports(path: pathlib.Path, module: str) -> set[str]:
  """Every project module `module` imports (absolute and relative, anywhere in the file)."""
  out = set()
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")
        anchor = anchor[: len(anchor) - node.level + 1]
        base = ".".join(anchor + ([base] if base else []))
      names = [base] + [f"{base}.{a.name}" for a in node.names]
    else:
      continue
    out |= {n for n in names if n.split(".")[0] in PACKAGES}
  return out


def _layer(name: str) -> str:
  def under(prefixes):
    return any(name == p or name.startswith(p + ".") for p in prefixes)

  if name.split(".")[0] == "kernels":
    return "kernels"
  if under([TOY]):
    return "toy"
  if under(ENTRY_POINTS):
    return "entry"
  if under(APPS):
    return "app"
  if name == "o2a_jax" or under(CORE - {"o2a_jax"}):
    return "core"
  return "unclassified"


ALLOWED = {
  "kernels": {"kernels"},
  "core": {"kernels", "core"},
  "app": {"kernels", "core", "app"},
  "toy": {"kernels", "core", "app", "toy"},
  "entry": {"kernels", "core", "app", "toy", "entry"},
}


def _modules():
  for pkg in PACKAGES:
    for path in sorted((ROOT / pkg).rglob("*.py")):
      yield path, _module_name(path)


def test_every_module_has_a_layer():
  missing = [m for _, m in _modules() if _layer(m) == "unclassified"]
  assert not missing, f"modules outside every layer (add them to one): {missing}"


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_imports_point_down(layer):
  bad = []
  for path, module in _modules():
    if _layer(module) != layer:
      continue
    for name in sorted(_imports(path, module)):
      if name == "o2a_jax":  # the bare package of `from o2a_jax import x`: x is judged
        continue
      target = _layer(name)
      if target != "unclassified" and target not in ALLOWED[layer]:
        bad.append(f"{module} ({layer}) imports {name} ({target})")
  assert not bad, "imports that point up the layers:\n" + "\n".join(bad)


def test_the_checker_catches_an_upward_import(tmp_path):
  """A core module importing an app is reported (the test above can fail)."""
  f = tmp_path / "probe.py"
  f.write_text("def f():\n  from o2a_jax.train import trainer\n")
  names = _imports(f, "o2a_jax.layers.probe")
  assert "o2a_jax.train.trainer" in names
  assert _layer("o2a_jax.layers.probe") == "core" and _layer("o2a_jax.train.trainer") == "app"
  assert "app" not in ALLOWED["core"]
