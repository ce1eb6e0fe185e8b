"""Sphinx configuration of the rsgd-optax documentation.

Build it from the repository root with the `docs` extra installed:

  python -m sphinx -W --keep-going -b html docs docs/_build/html

The build reads nothing from the network (no intersphinx inventories, no remote images), and the
built pages load nothing from it: MathJax is served from the site itself.
"""

import json
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import rsgd_optax  # noqa: E402

project = "rsgd-optax"
author = "the rsgd-optax developers"
copyright = "the rsgd-optax developers"
release = rsgd_optax.__version__
version = release

extensions = [
  "myst_parser",
  "sphinx.ext.autodoc",
  "sphinx.ext.autosummary",
  "sphinx.ext.mathjax",
  "sphinx.ext.napoleon",
  "sphinx.ext.viewcode",
  # MathJax 3 copied into the built site (_static/mathjax/) and loaded from there: the formulas
  # typeset with no network. `.ci/check_math.py` checks it in headless Chromium.
  "sphinx-mathjax-offline",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_generated"]

# API pages, in the style of optax's: signatures without the private module paths, hints in the
# signature, members in the order of the source.
add_module_names = False
autodoc_typehints = "signature"
autodoc_member_order = "bysource"
# Show these annotations by name instead of expanding them into long unions.
autodoc_type_aliases = {
  "optax.Schedule": "optax.Schedule",
  "PyTree": "PyTree",
  "Scheme": "rsgd_optax.Scheme",
  "_schemes.Scheme": "rsgd_optax.Scheme",
}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = f"rsgd-optax {release}"
html_theme_options = {"show_toc_level": 2}
html_static_path = ["_static"]
html_css_files = ["custom.css"]


GENERATED = pathlib.Path(__file__).parent / "_generated"
BENCHMARKS = {
  "cost-cpu.md": ROOT / "benchmarks" / "results-cpu.json",
  "cost-gpu.md": ROOT / "benchmarks" / "results-gpu-h100.json",
}


def _cost_table(results: dict) -> str:
  """The cost of each residual against SGDm, from a JSON file that `benchmarks.run` wrote."""
  tree = results["resnet50_tree"]
  machine = results["machine"]
  lines = [
    "| optimizer | step time, x SGDm | looped step time, x SGDm | compile time, x SGDm "
    "| optimizer memory beyond SGDm, x params |",
    "|---|---|---|---|---|",
  ]
  for name, row in tree["optimizers"].items():
    memory = f"{row['memory']['state_beyond_sgdm_per_params_bytes']:.2f}"
    if "step_ratio" in row:
      times = [f"{row[key]:.2f}" for key in ("step_ratio", "looped_step_ratio", "compile_ratio")]
    else:
      times = ["-", "-", "-"]
    lines.append(f"| `{name}` | " + " | ".join([*times, memory]) + " |")
  cnn = results["cnn_step"]
  lines += [
    "",
    f"ResNet-50-shaped tree of {tree['entries']:,} float32 entries in {tree['leaves']} leaves; "
    f"looped: {tree['looped_steps']} steps inside one call. Whole training step of "
    f"{cnn['model']} at batch {cnn['batch']}: RSGDm (`residual_scale`) takes "
    f"{cnn['step_ratio']:.3f}x SGDm's time. Device: {machine['device_kind']} "
    f"({machine['backend']} backend, {machine['cpu_count']} host CPUs, jax {machine['jax']}); "
    f"medians of {results['rounds']} interleaved rounds.",
  ]
  return "\n".join(lines) + "\n"


def _write_cost_tables(app):
  """Renders the measured costs into docs/_generated/, which the pages include."""
  GENERATED.mkdir(exist_ok=True)
  for name, source in BENCHMARKS.items():
    text = _cost_table(json.loads(source.read_text()))
    target = GENERATED / name
    if not target.exists() or target.read_text() != text:
      target.write_text(text)


def _check_api_coverage(app, env):
  """Warns (an error under -W) for any public name that no API page documents."""
  objects = env.get_domain("py").objects
  missing = [name for name in rsgd_optax.__all__ if f"rsgd_optax.{name}" not in objects]
  if missing:
    from sphinx.util import logging

    logging.getLogger(__name__).warning(
      "rsgd_optax.__all__ names without an API entry in docs/api.rst: %s", ", ".join(missing)
    )


def _tidy_signature(app, what, name, obj, options, signature, return_annotation):
  """Autodoc writes an alias inside a union as `TypeAliasForwardRef('name')`: show the name."""

  def tidy(text):
    return re.sub(r"TypeAliasForwardRef\('([\w.]+)'\)", r"\1", text) if text else text

  return tidy(signature), tidy(return_annotation)


def setup(app):
  app.connect("autodoc-process-signature", _tidy_signature)
  app.connect("builder-inited", _write_cost_tables)
  app.connect("env-check-consistency", _check_api_coverage)
