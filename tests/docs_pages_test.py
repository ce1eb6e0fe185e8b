"""The code on the documentation pages runs as written, each page's blocks in order."""

import pathlib
import re

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / "docs"
CODE_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = sorted(page for page in DOCS.glob("*.md") if CODE_BLOCK.search(page.read_text()))


def test_pages_with_code_are_found():
  assert {page.name for page in PAGES} >= {
    "compared_with.md",
    "getting_started.md",
    "how_it_works.md",
    "recipes.md",
  }


@pytest.mark.standard_promotion
@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_page_code_runs(page):
  text = page.read_text()
  namespace = {"__name__": f"docs_{page.stem}"}
  for block in CODE_BLOCK.finditer(text):
    # Pad with the lines above the block so that a traceback names the page's own line numbers.
    source = "\n" * text.count("\n", 0, block.start(1)) + block.group(1)
    exec(compile(source, str(page), "exec"), namespace)


ROOT = DOCS.parent
# A path that only exists on the machine where a command was run: a home or work checkout, or the
# absolute path of a virtual environment.
MACHINE_PATH = re.compile(r"(?<![\w.~-])/(?:work|home|root|Users)/\S*|(?<![\w.~-])/\S*/\.venv\b")


@pytest.mark.parametrize(
  "readme",
  sorted({*ROOT.glob("*.md"), *ROOT.glob("examples/*/README.md"), *ROOT.glob("benchmarks/*.md")}),
  ids=lambda path: str(path.relative_to(ROOT)),
)
def test_readmes_name_no_machine_paths(readme):
  found = [
    f"line {number}: {match.group(0)}"
    for number, line in enumerate(readme.read_text().splitlines(), 1)
    for match in MACHINE_PATH.finditer(line)
  ]
  assert not found, f"{readme.name} names paths of one machine; use relative paths: {found}"
