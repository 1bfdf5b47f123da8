"""Regenerates tests/fixtures/sigmas_diffusers.json from diffusers' scheduler (test-only tool).

  pip install -e ".[torch]" && python scripts/make_sigma_fixture.py

The official sampler is diffusers 0.33 `FlowMatchEulerDiscreteScheduler(shift, 1000 steps)`;
this records its `sigmas` after `set_timesteps(n)` for a few (steps, shift) pairs.
"""

import json
import pathlib

import diffusers
from diffusers import FlowMatchEulerDiscreteScheduler

OUT = pathlib.Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "sigmas_diffusers.json"


def main() -> None:
  cases = []
  for steps, shift in ((30, 7.0), (4, 7.0), (3, 7.0), (50, 5.0), (30, 1.0)):
    sched = FlowMatchEulerDiscreteScheduler(shift=shift, num_train_timesteps=1000)
    sched.set_timesteps(steps)
    cases.append(
      {"steps": steps, "shift": shift, "sigmas": [float(s) for s in sched.sigmas.numpy()]}
    )
  OUT.write_text(json.dumps({"diffusers": diffusers.__version__, "cases": cases}, indent=1))
  print(f"wrote {OUT}")


if __name__ == "__main__":
  main()
