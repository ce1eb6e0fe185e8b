"""Fixtures shared by the example families' tests."""

import pytest

from examples.common import runloop


@pytest.fixture
def run_loop_calls(monkeypatch):
  """The view names of every call a trainer makes to the shared run loop, in order."""
  calls = []
  original = runloop.run

  def spy(*args, **kwargs):
    calls.append([v.name for v in kwargs["views"]])
    return original(*args, **kwargs)

  monkeypatch.setattr(runloop, "run", spy)
  return calls
