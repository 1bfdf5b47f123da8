"""Acceptance tests of `o2a_jax.pose` against the official fixtures (pose_tiny, retarget_tiny)."""

import json
import pathlib

import numpy as np
import pytest

from o2a_jax import pose as P

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="module")
def pose_tiny():
  cases = json.loads((FIXTURES / "pose_tiny" / "cases.json").read_text())
  with np.load(FIXTURES / "pose_tiny" / "io.npz") as z:
    arrays = {k: z[k] for k in z.files}
  return cases, arrays


def _render_ids():
  cases = json.loads((FIXTURES / "pose_tiny" / "cases.json").read_text())
  return [c["key"] for c in cases["render"]]


def _translate_ids():
  cases = json.loads((FIXTURES / "pose_tiny" / "cases.json").read_text())
  return [c["key"] for c in cases["translate"]]


@pytest.mark.parametrize("key", _render_ids())
def test_render_pixel_identical(pose_tiny, key):
  cases, arrays = pose_tiny
  case = next(c for c in cases["render"] if c["key"] == key)
  img = P.render(
    cases["poses"][case["pose"]],
    case["H"],
    case["W"],
    without_face=case.get("without_face", False),
    face_change=case.get("face_change", False),
    head_change=case.get("head_change", False),
  )
  expected = arrays[key]
  assert img.dtype == np.uint8 and img.shape == expected.shape
  assert np.array_equal(img, expected), f"{np.count_nonzero(img != expected)} values differ"


@pytest.mark.parametrize("key", _translate_ids())
def test_translate_reference_matches(pose_tiny, key):
  cases, arrays = pose_tiny
  case = next(c for c in cases["translate"] if c["key"] == key)
  image, pose_image, mask, affine = P.translate_reference(
    arrays["translate.ref_image"],
    cases["poses"][case["reference"]],
    cases["poses"][case["driving"]],
  )
  assert float(
    P.body_scale_ratio(cases["poses"][case["reference"]], cases["poses"][case["driving"]])
  ) == (pytest.approx(case["scale"], abs=1e-7))
  for name, got in (("image", image), ("pose", pose_image), ("mask", mask)):
    expected = arrays[f"{key}.{name}"]
    assert got.dtype == np.uint8 and got.shape == expected.shape, name
    assert np.array_equal(got, expected), (
      f"{name}: {np.count_nonzero(got != expected)} values differ"
    )
  assert affine.shape == (2, 3)
  np.testing.assert_allclose(affine, arrays[f"{key}.affine"], rtol=0, atol=1e-5)
