"""benchmarks/timing.py: the order in which interleaved rounds run their variants."""

from benchmarks import timing


def test_alternate_reverses_every_other_round():
  calls: list[str] = []
  variants = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
  times = timing.interleaved(variants, rounds=3, warmup=0, alternate=True)
  assert calls == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
  assert {name: len(seconds) for name, seconds in times.items()} == {"a": 3, "b": 3, "c": 3}
  calls.clear()
  timing.interleaved(variants, rounds=2, warmup=1)
  assert calls == ["a", "b", "c"] * 3
