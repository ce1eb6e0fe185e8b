"""Strictness for the library's tests: warnings are errors and dtype promotion is explicit.

Strict promotion makes any silent mixing of dtypes inside the library fail loudly, so that the dtype
tests show what the library does rather than what JAX's promotion rules happen to produce.
"""

import jax
import pytest


def pytest_collection_modifyitems(items):
  for item in items:
    if "/tests/" in str(item.path):
      item.add_marker(pytest.mark.filterwarnings("error"))


@pytest.fixture(autouse=True)
def _strict_dtype_promotion(request):
  if "/tests/" not in str(request.path) or request.node.get_closest_marker("standard_promotion"):
    yield
    return
  with jax.numpy_dtype_promotion("strict"):
    yield


def pytest_configure(config):
  config.addinivalue_line(
    "markers", "standard_promotion: run with JAX's standard dtype promotion (optax internals mix)."
  )
