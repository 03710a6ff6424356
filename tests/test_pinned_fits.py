"""Refits of fixed-seed cases equal the numbers recorded before the fitting layer was
rewritten as one protocol (tests/pinned_fits.py; recorded from main at f59b72a).

Tolerance: float32 relative 1e-6 (with an absolute floor of 1e-6 for entries near
zero). The arithmetic of each step is unchanged by the redesign, so the values are
expected bit-identical on one machine; the tolerance absorbs XLA's freedom to fuse
the same sums in another order when the surrounding program changes.
"""

import numpy as np
import pytest
from pinned_fits import CASES, PINNED, flat

_pinned = np.load(PINNED)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fit_equals_pinned_numbers(name):
    got = flat(name, CASES[name]())
    want = {k: _pinned[k] for k in _pinned.files if k.startswith(name + "/")}
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-6, atol=1e-6, err_msg=k)
