"""Shared test setup.

Every compiled XLA CPU executable holds memory mappings; a single process that
compiles thousands of functions (this suite) would pass Linux's default
``vm.max_map_count`` (65530) and crash in the compiler with a segmentation fault.
Dropping JAX's caches (and the executables fit_sgd keeps across calls) after each
test module frees them.
"""

import jax
import pytest

from probseq.fit import sgd


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_executables():
    yield
    jax.clear_caches()
    sgd.clear_compiled_cache()
