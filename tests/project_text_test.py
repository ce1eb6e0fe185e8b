"""Project text speaks of the code: no file cites a numbered work item or the session it was written in.

A reader of the code, the docs, an error message or a results page cannot look up a tracker's
numbered item, and the session in which a note was written means nothing to them; the text says
what the code does instead.
Every tracked text file is read (code, comments, docs, CHANGELOG, committed result records).
"""

import pathlib
import re
import subprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Written with \s and character classes, so that this file's own patterns do not match themselves.
CITATION = re.compile(
  r"\b(?:issues?|work\s+items?|tickets?|pull\s+requests?|PRs?)\s*(?:no\.?\s*)?#?\d+"
  r"|(?<![\w&/#])#\d+\b"
  r"|\bthis\s+session\b|\bfound\s+and\s+fixed\b",
  re.IGNORECASE,
)
# Formats where "#" followed by digits means something else (CSS colours) or that hold no text.
SKIPPED_SUFFIXES = {".css", ".png", ".jpg", ".svg", ".ico", ".woff", ".woff2"}
# Folders that are never project text, for the walk used when git is not there.
UNTRACKED_DIRS = {".git", ".venv", "runs", "_build", "_generated", "build", "dist", "__pycache__"}


def tracked_files() -> list[pathlib.Path]:
  """The files git tracks (a checkout without git: every file outside build and run folders)."""
  try:
    listing = subprocess.run(
      ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
    ).stdout
    names = [name for name in listing.split("\0") if name]
  except (OSError, subprocess.CalledProcessError):
    names = [
      str(path.relative_to(ROOT))
      for path in ROOT.rglob("*")
      if path.is_file() and not UNTRACKED_DIRS & set(path.relative_to(ROOT).parts)
    ]
  return [ROOT / name for name in names if pathlib.Path(name).suffix not in SKIPPED_SUFFIXES]


def citations(text: str, where: str) -> list[str]:
  """``where:line: match`` for each citation of a work item or a session in ``text``."""
  return [
    f"{where}:{number}: {match.group(0)!r}"
    for number, line in enumerate(text.splitlines(), 1)
    for match in CITATION.finditer(line)
  ]


def test_the_pattern_finds_citations_and_leaves_plain_words():
  number = "22"
  cited = [
    f"fixed in issue {number}",
    f"since Issue #{number}",
    f"(issues {number} and 23)",
    f"see #{number}",
    f"the work item {number}",
    f"PR {number}",
    "found and " + "fixed at noon",
    "measured this " + "session",
  ]
  for text in cited:
    assert citations(text, "f.md") == [f"f.md:1: {CITATION.search(text).group(0)!r}"], text
  plain = [
    "issues with a shared machine",
    "tissue 5",
    "start_new_session=True",
    "[Cost](#cost)",
    "&#123;",
    "https://example.org/page/#1",
    "x = 1  # 2 steps",
    "prefix 3",
  ]
  for text in plain:
    assert citations(text, "f.md") == [], text


def test_project_text_cites_no_work_item():
  files = tracked_files()
  assert ROOT / "README.md" in files and ROOT / "CHANGELOG.md" in files
  found = []
  for path in files:
    try:
      text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, FileNotFoundError):  # binary, or deleted and not yet committed
      continue
    found += citations(text, str(path.relative_to(ROOT)))
  assert not found, "say what the code does instead of citing a work item:\n" + "\n".join(found)
