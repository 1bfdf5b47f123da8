"""The dimension annotations (`o2a_jax.dims`) are checked in this suite and can fail."""

import numpy as np
import pytest

from o2a_jax import dims as D
from o2a_jax.model.denoiser import Denoiser
from o2a_jax.sampling.chunk import generate_chunk
from o2a_jax.vae.model import WanVAE


def test_checks_are_on_in_the_suite():
  assert D.ENABLED, "tests/conftest.py sets O2A_CHECK_DIMS=1 before o2a_jax is imported"


def test_specs_bind_across_arguments_and_result():
  @D.dims(x="B L D", y="B 3", returns="B L")
  def f(x, y=None, *, out=None):
    return np.zeros(out) if out is not None else x[..., 0]

  f(np.zeros((2, 5, 4)), np.zeros((2, 3)))
  f(np.zeros((2, 5, 4)))  # None arguments are not checked
  with pytest.raises(D.DimsError, match=r"y has B = 3 .* but x has B = 2"):
    f(np.zeros((2, 5, 4)), np.zeros((3, 3)))
  with pytest.raises(D.DimsError, match=r"y has shape \(2, 4\); expected \(B 3\)"):
    f(np.zeros((2, 5, 4)), np.zeros((2, 4)))
  with pytest.raises(D.DimsError, match=r"x has shape \(2, 5\); expected \(B L D\)"):
    f(np.zeros((2, 5)))
  with pytest.raises(D.DimsError, match="the result has L = 6"):
    f(np.zeros((2, 5, 4)), out=(2, 6))
  with pytest.raises(TypeError, match="unknown arguments"):
    D.dims(z="B")(lambda x: x)


def test_public_entry_points_are_annotated():
  for fn in (Denoiser.__call__, WanVAE.encode, WanVAE.decode, generate_chunk):
    assert fn.__dims__["returns"], fn
