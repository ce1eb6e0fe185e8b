"""Sphinx configuration of the rsgd-optax documentation.

Build it from the repository root with the `docs` extra installed:

  python -m sphinx -W --keep-going -b html docs docs/_build/html

The build reads nothing from the network (no intersphinx inventories, no remote images), and the
built pages load nothing from it: MathJax is served from the site itself.
"""

import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "docs"))

import cost_figures  # noqa: E402

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
# Served from the build (relative to _static/, where sphinx-mathjax-offline copies MathJax 3),
# never Sphinx's CDN default; stated here so that the page's script source reads in the config.
mathjax_path = "mathjax/tex-chtml.js"

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
# The pages include these tables, rendered from the JSON of `python -m benchmarks.run` by
# docs/cost_figures.py, the one source of every cost figure (README included).
COST_TABLES = {"cost-cpu.md": "cpu", "cost-gpu.md": "gpu-h100"}


def _write_cost_tables(app):
  """Renders the measured costs into docs/_generated/, which the pages include."""
  GENERATED.mkdir(exist_ok=True)
  for name, key in COST_TABLES.items():
    text = cost_figures.cost_table(key)
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


def _public_array_type(app, doctree):
  """Shows an attribute's ``jax.Array`` type by its public name, not as jaxlib's private class.

  Autodoc reads the NamedTuple states' field types off the evaluated annotations, which name the
  class where it is defined (``jax.jaxlib._jax.Array``); ``autodoc_type_aliases`` does not reach them.
  """
  from docutils import nodes

  for text in list(doctree.findall(nodes.Text)):
    if "jaxlib._jax.Array" in text:
      public = re.sub(r"(jax\.)?jaxlib\._jax\.Array", "jax.Array", str(text))
      text.parent.replace(text, nodes.Text(public))


def setup(app):
  app.connect("doctree-read", _public_array_type)
  app.connect("autodoc-process-signature", _tidy_signature)
  app.connect("builder-inited", _write_cost_tables)
  app.connect("env-check-consistency", _check_api_coverage)
