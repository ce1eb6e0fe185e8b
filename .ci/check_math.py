"""Docs check: the built site typesets its formulas with no network, in a real browser.

Run from the repository root after building the site (Debian's `chromium` installed):

  python .ci/check_math.py docs/_build/html

Exits non-zero, naming the page and the problem, when:
- any built page loads a script or a stylesheet from outside the site (`http://`, `https://`, `//`);
- `how_it_works.html` or `api.html`, opened in headless Chromium with every network request
  refused, has no formula, fewer typeset formulas (`mjx-container`) than the page's math elements,
  a MathJax error (`mjx-merror`), or a raw LaTeX delimiter (`\\(`, `\\)`, `\\[`, `\\]`, `$$`) left in
  its visible text outside code blocks.
"""

from __future__ import annotations

import html.parser
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile

PAGES = ("how_it_works.html", "api.html")
DELIMITERS = ("\\(", "\\)", "\\[", "\\]", "$$")
# Chromium waits this long (virtual time: it ends as soon as the page is idle) for MathJax.
VIRTUAL_TIME_MS = 30_000
EXTERNAL = re.compile(
  r"<(?:script[^>]*\ssrc|link[^>]*\shref)=[\"']?(?:https?:)?//[^\"'\s>]+", re.IGNORECASE
)


def _fail(message: str) -> None:
  sys.exit(f"check_math: {message}")


class _VisibleText(html.parser.HTMLParser):
  """The text a reader sees, outside scripts, styles and code blocks; counts MathJax's elements."""

  HIDDEN = frozenset({"script", "style", "pre", "code", "template"})

  def __init__(self) -> None:
    super().__init__(convert_charrefs=True)
    self.hidden_depth = 0
    self.text: list[str] = []
    self.counts = {"mjx-container": 0, "mjx-merror": 0}

  def handle_starttag(self, tag, attrs):
    if tag in self.counts:
      self.counts[tag] += 1
    if tag in self.HIDDEN:
      self.hidden_depth += 1

  def handle_endtag(self, tag):
    if tag in self.HIDDEN and self.hidden_depth:
      self.hidden_depth -= 1

  def handle_data(self, data):
    if not self.hidden_depth:
      self.text.append(data)


def math_elements(page_html: str) -> int:
  """The formulas Sphinx wrote into a page: its `math` spans and divs (one formula each)."""
  return len(re.findall(r"<(?:span|div)[^>]*class=\"math[\s\"]", page_html))


def dump_dom(chromium: str, page: pathlib.Path, profile: pathlib.Path) -> str:
  """The page's DOM after its scripts ran, in headless Chromium with every request refused."""
  done = subprocess.run(
    [
      chromium,
      "--headless",
      "--no-sandbox",  # CI runs as root
      "--disable-gpu",
      f"--user-data-dir={profile}",
      # No network: every host name fails to resolve and every request goes to a closed port.
      "--host-resolver-rules=MAP * ~NOTFOUND",
      "--proxy-server=http://127.0.0.1:9",
      f"--virtual-time-budget={VIRTUAL_TIME_MS}",
      "--dump-dom",
      page.resolve().as_uri(),
    ],
    capture_output=True,
    text=True,
    timeout=180,
  )
  if done.returncode != 0 or "<html" not in done.stdout:
    _fail(f"chromium could not load {page} ({done.returncode}):\n{done.stderr[-2000:]}")
  return done.stdout


def check_page(chromium: str, page: pathlib.Path, profile: pathlib.Path) -> str:
  """Checks one page; returns a one-line summary."""
  expected = math_elements(page.read_text())
  if expected == 0:
    _fail(f"{page.name} has no formula to check (no `math` element in the built page)")
  parser = _VisibleText()
  parser.feed(dump_dom(chromium, page, profile))
  text = "".join(parser.text)
  typeset, errors = parser.counts["mjx-container"], parser.counts["mjx-merror"]
  left = sorted({d for d in DELIMITERS if d in text})
  if typeset < expected or errors or left:
    shown = ""
    if left:
      at = text.index(left[0])
      shown = f"; raw LaTeX in the text, e.g. {text[max(0, at - 40) : at + 60]!r}"
    _fail(
      f"{page.name}: {typeset} of {expected} formulas typeset, {errors} MathJax errors{shown}. "
      "Is MathJax served from the site (sphinx-mathjax-offline in docs/conf.py's extensions)?"
    )
  return f"{page.name}: {typeset} of {expected} formulas typeset, no raw LaTeX left"


def main() -> None:
  site = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "docs/_build/html")
  if not (site / "index.html").exists():
    _fail(f"no built site at {site}: build it first (python -m sphinx -b html docs {site})")
  for built in sorted(site.rglob("*.html")):
    found = EXTERNAL.findall(built.read_text(errors="replace"))
    if found:
      _fail(f"{built.relative_to(site)} loads from outside the site: {found[:3]}")
  chromium = shutil.which("chromium") or shutil.which("chromium-browser")
  if chromium is None:
    _fail("no chromium on PATH: install Debian's `chromium` (apt-get install -y chromium)")
  with tempfile.TemporaryDirectory(prefix="rsgd-chromium-") as profile:
    for name in PAGES:
      print(check_page(chromium, site / name, pathlib.Path(profile)))


if __name__ == "__main__":
  main()
