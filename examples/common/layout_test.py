"""The modules of ``examples/common`` import one another in one direction only, as
``examples/common/__init__.py`` lists them, and ``examples`` never imports ``benchmarks``."""

import ast
import pathlib
import re

import examples
import examples.common

COMMON = pathlib.Path(examples.common.__file__).parent
EXAMPLES = pathlib.Path(examples.__file__).parent


def _imports(path: pathlib.Path) -> set[str]:
  """Every module a file imports (dotted), at module level or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module:
      found.add(node.module)
      found |= {f"{node.module}.{alias.name}" for alias in node.names}
    elif isinstance(node, ast.Import):
      found |= {alias.name for alias in node.names}
  return found


def _common_modules(path: pathlib.Path) -> set[str]:
  """The ``examples.common`` modules a file imports (``from examples.common import x`` included)."""
  modules = {p.stem for p in COMMON.glob("*.py")}
  prefix = "examples.common."
  return {
    name[len(prefix) :].split(".")[0]
    for name in _imports(path)
    if name.startswith(prefix) and name[len(prefix) :].split(".")[0] in modules
  }


def _listed() -> list[str]:
  return re.findall(r"^- ``(\w+)``", examples.common.__doc__ or "", flags=re.MULTILINE)


def test_the_package_docstring_lists_every_module_once():
  order = _listed()
  modules = sorted(
    p.stem for p in COMMON.glob("*.py") if p.stem != "__init__" and not p.stem.endswith("_test")
  )
  assert sorted(order) == modules, "examples/common/__init__.py must list every module once"


def test_each_module_imports_only_modules_listed_above_it():
  order = _listed()
  for position, name in enumerate(order):
    imported = _common_modules(COMMON / f"{name}.py") - {name}
    below = imported - set(order[:position])
    assert not below, f"{name} imports {sorted(below)}, listed after it: imports must run one way"


def test_common_imports_no_family_and_no_benchmark():
  for path in COMMON.glob("*.py"):
    if path.stem.endswith("_test"):
      continue
    outside = {
      name
      for name in _imports(path)
      if name.split(".")[0] == "benchmarks"
      or (name.startswith("examples.") and not name.startswith("examples.common"))
    }
    assert not outside, f"{path.name} imports {sorted(outside)}: common code stays below both"


def test_no_example_imports_the_benchmarks():
  for path in EXAMPLES.rglob("*.py"):
    benchmarks = {name for name in _imports(path) if name.split(".")[0] == "benchmarks"}
    assert not benchmarks, f"{path.relative_to(EXAMPLES)} imports {sorted(benchmarks)}"
