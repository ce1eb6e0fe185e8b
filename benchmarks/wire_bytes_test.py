"""``benchmarks.wire_bytes``: the bytes of both exchanges read from a small compiled step against
their wire formats, and the committed record of both exchanges against the number of devices (the
HLO reader itself is tested in ``examples/common/hlo_test.py``)."""

import json
import pathlib

import pytest

from benchmarks import wire_bytes


def test_two_phase_bytes_read_from_the_compiled_hlo_are_the_wire_formats():
  """Compiled on 8 devices, a small tree: each exchange's HLO bytes against its wire format.

  Leaves of 35, 6 and 4,000 entries; each device serves pieces of 5, 1 and 500 (a chunk of 506
  entries, 64 bytes of sign bits). Ring formulas: an all-gather sends 7 times a device's block, an
  all-to-all 7 of its 8 blocks, an all-reduce 2 * 7 / 8 of the buffer.
  """
  shapes = {"a": (5, 7), "b": (6,), "c": (40, 100)}
  rows = wire_bytes.scaling_row(shapes)["exchanges"]
  expected = {
    "psum_f32": 2 * 7 / 8 * 4 * 4041,
    # 506 bytes of bits (4,041 bits) and 3 float32 scales, gathered.
    "sign_all_gather": 7 * (506 + 4 * 3),
    # 64 bytes of bits each way, the senders' 3 scales gathered, the server's 3 all-reduced.
    "sign_two_phase": 2 * 7 * 64 + 7 * 4 * 3 + 2 * 7 / 8 * 4 * 3,
    # k = 1, 1 and 40 (1% of each leaf, at least 1) int32 index + float32 value pairs, gathered.
    "topk1pct_all_gather": 7 * 8 * (1 + 1 + 40),
    # k = 1, 1 and 5 of each piece, each way.
    "topk1pct_two_phase": 2 * 7 * 8 * (1 + 1 + 5),
  }
  for name, value in expected.items():
    assert rows[name]["bytes_sent_per_device"] == pytest.approx(value), name
    assert rows[name]["formula_bytes_per_device"] == pytest.approx(value), name
  ops = {op["op"] for op in rows["sign_two_phase"]["collectives"]}
  assert "all-to-all" in ops and "all-gather" in ops


def test_block_wise_sign_bytes_read_from_the_compiled_hlo_are_the_wire_format():
  """Blocks of 4 on 8 devices: the scales a block adds, in both exchanges, read from the HLO.

  Leaves of 35, 6 and 4,000 entries: 9 + 2 + 1,000 blocks of the leaves (all-gather); pieces of
  5, 1 and 500 entries cut into 2 + 1 + 125 blocks (two-phase: with the chunk, both phases).
  """
  shapes = {"a": (5, 7), "b": (6,), "c": (40, 100)}
  rows = wire_bytes.scaling_row(shapes, block_size=4)["exchanges"]
  expected = {
    "signblock_all_gather": 7 * (506 + 4 * 1011),
    "signblock_two_phase": 2 * 7 * (64 + 4 * 128),
  }
  for name, value in expected.items():
    assert rows[name]["bytes_sent_per_device"] == pytest.approx(value), name
    assert rows[name]["formula_bytes_per_device"] == pytest.approx(value), name


RECORD = pathlib.Path(__file__).parent / "results" / "wire-bytes-cpu.json"


def test_the_committed_scaling_record_meets_the_goals_and_is_the_table_in_the_docs():
  """Two-phase: sign >= 28x and top-k 1% >= 40x fewer bytes than the float32 all-reduce at every P,
  temporaries <= 3x the gradient at P = 64; the HLO bytes equal the wire formats' in every row."""
  scaling = json.loads(RECORD.read_text())["scaling"]
  assert [row["devices"] for row in scaling["rows"]] == [8, 16, 32, 64]
  page = (pathlib.Path(__file__).parents[1] / "docs" / "compressed.md").read_text()
  for row in scaling["rows"]:
    rows = row["exchanges"]
    assert rows["sign_two_phase"]["bytes_ratio"] >= 28, row["devices"]
    assert rows["topk1pct_two_phase"]["bytes_ratio"] >= 40, row["devices"]
    for name, ex in rows.items():
      assert ex["bytes_sent_per_device"] == pytest.approx(ex["formula_bytes_per_device"]), name
      cell = (
        f"{ex['bytes_sent_per_device'] / (1 << 20):.3f} MiB, {ex['bytes_ratio']:.1f}x, "
        f"{ex['temp_per_gradient']:.2f}"
      )
      assert name == "psum_f32" or cell in page, (row["devices"], name, cell)
  last = scaling["rows"][-1]["exchanges"]
  assert last["sign_two_phase"]["temp_per_gradient"] <= 3
  assert last["topk1pct_two_phase"]["temp_per_gradient"] <= 3
