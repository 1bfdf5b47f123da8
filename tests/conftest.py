"""Test setup: 8 simulated CPU devices and a quicker XLA backend (set before jax is imported),
and shared fixtures."""

import os
import pathlib

# The suite is compile-bound (tiny models, many programs): without LLVM's backend optimisation
# XLA's CPU compiles take ~40 % less time (measured: lora_train_test + model_test 95 s -> 58 s);
# only code generation changes, the HLO passes run as usual and every parity test holds.
os.environ.setdefault(
  "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("O2A_CHECK_DIMS", "1")  # every @dims annotation is checked on every call

import jax  # noqa: E402
import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
  return FIXTURES


def pytest_collection_modifyitems(config, items):
  """GPU tests are skipped where there is no GPU."""
  if jax.default_backend() == "gpu":
    return
  skip = pytest.mark.skip(reason="needs a GPU")
  for item in items:
    if "gpu" in item.keywords:
      item.add_marker(skip)
