"""The runnable examples in the library's docstrings are part of the test suite."""

import doctest
import importlib
import pkgutil

import pytest

import rsgd_optax

MODULES = sorted(
  {"rsgd_optax"} | {f"rsgd_optax.{m.name}" for m in pkgutil.iter_modules(rsgd_optax.__path__)}
)


@pytest.mark.standard_promotion
@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples_run(module_name):
  module = importlib.import_module(module_name)
  result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
