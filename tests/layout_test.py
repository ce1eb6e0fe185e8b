"""The library's modules import one another in one direction only, as ``rsgd_optax/__init__.py``
lists them."""

import ast
import pathlib
import re

import rsgd_optax

PACKAGE = pathlib.Path(rsgd_optax.__file__).parent


def _imported_modules(path: pathlib.Path) -> set[str]:
  """The ``rsgd_optax._x`` modules a file imports, at module level or inside functions."""
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "rsgd_optax":
      found |= {alias.name for alias in node.names if alias.name.startswith("_")}
    elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("rsgd_optax._"):
      found.add(node.module.split(".")[1])
    elif isinstance(node, ast.Import):
      found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("rsgd_optax._")}
  return found


def test_each_module_imports_only_modules_listed_above_it():
  order = re.findall(r"^- ``(_\w+)``", rsgd_optax.__doc__ or "", flags=re.MULTILINE)
  modules = sorted(p.stem for p in PACKAGE.glob("_*.py") if p.stem != "__init__")
  assert sorted(order) == modules, "the layout list in __init__.py must name every module once"
  for position, name in enumerate(order):
    imported = _imported_modules(PACKAGE / f"{name}.py")
    below = imported - set(order[:position])
    assert not below, f"{name} imports {sorted(below)}, listed after it: imports must run one way"
