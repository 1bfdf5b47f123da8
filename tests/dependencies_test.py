"""Every third-party module the runtime code imports is declared in `pyproject.toml`, and the lock
pins every declared dependency.

A machine with packages installed by hand once hid an undeclared dependency (sentencepiece):
CI in a brand-new virtual environment catches that too, but only at the test that imports it;
this check names the module and the file at once, whatever the machine has installed.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import pathlib
import re
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]
RUNTIME = ("o2a_jax", "kernels", "data_pipeline")
FIRST_PARTY = {*RUNTIME, "configs", "benchmarks", "scripts", "tests"}
# Imported only by optional paths, each declared in its extra: the conversion checks (`torch`)
# and the TFDS dataset (`tfds`; imported lazily, with an error naming the extra).
OPTIONAL = {
  "torch": "torch",
  "diffusers": "torch",
  "transformers": "torch",
  "tensorflow_datasets": "tfds",
}
# Where an import name is not its distribution's name and the distribution is not installed here.
KNOWN = {"cv2": "opencv-python-headless", "PIL": "pillow", "yaml": "pyyaml"}


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
  return _norm(re.split(r"[\s<>=!~;\[]", req.strip(), maxsplit=1)[0])


def _pyproject():
  return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _imports() -> dict[str, list[str]]:
  """Top-level module -> files importing it (any depth: lazy imports count too)."""
  found: dict[str, list[str]] = {}
  for pkg in RUNTIME:
    for path in sorted((ROOT / pkg).rglob("*.py")):
      tree = ast.parse(path.read_text(), str(path))
      for node in ast.walk(tree):
        if isinstance(node, ast.Import):
          names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
          names = [node.module]
        else:
          continue
        for name in names:
          found.setdefault(name.split(".")[0], []).append(str(path.relative_to(ROOT)))
  return found


def test_runtime_imports_are_declared():
  declared = {_requirement_name(r) for r in _pyproject()["dependencies"]}
  extras = {
    name: {_requirement_name(r) for r in reqs}
    for name, reqs in _pyproject()["optional-dependencies"].items()
  }
  dists = md.packages_distributions()
  missing = []
  for module, files in sorted(_imports().items()):
    if module in sys.stdlib_module_names or module in FIRST_PARTY or module == "__future__":
      continue
    names = {_norm(d) for d in dists.get(module, [])} or {_norm(KNOWN.get(module, module))}
    allowed = declared | (extras[OPTIONAL[module]] if module in OPTIONAL else set())
    if not names & allowed:
      missing.append(f"{module} (distribution {sorted(names)}) imported by {files[0]}")
  assert not missing, "undeclared in pyproject.toml [project.dependencies]:\n" + "\n".join(missing)


def test_lock_pins_every_dependency():
  lock = ROOT / "requirements" / "constraints.txt"
  pinned = {}
  for line in lock.read_text().splitlines():
    m = re.match(r"^([A-Za-z0-9_.\-]+)==([^\s;]+)", line)
    if m:
      pinned[_norm(m.group(1))] = m.group(2)
  project = _pyproject()
  wanted = list(project["dependencies"]) + list(project["optional-dependencies"]["test"])
  unpinned = [r for r in wanted if _requirement_name(r) not in pinned]
  assert not unpinned, f"not pinned in {lock}: {unpinned}; regenerate it (command in its header)"
  # The official fixtures were made with this OpenCV; others round warpAffine differently.
  assert pinned["opencv-python-headless"] == "5.0.0.93"
