"""``benchmarks.wire_bytes``: its HLO reading on hand-written lines and on a small compiled step (the
bytes of both exchanges against their wire formats), and the committed record of both exchanges
against the number of devices."""

import json
import pathlib

import pytest

from benchmarks import wire_bytes

# Lines as XLA's CPU compiler prints them (operands untyped, results typed), trimmed.
HLO = """HloModule jit_step, is_scheduled=true, num_partitions=8
ENTRY %main {
  %all-gather.1 = u8[2,48174]{1,0} all-gather(%fusion), channel_id=1, replica_groups={{0,4},{1,5},{2,6},{3,7}}, dimensions={0}
  %all-reduce.2 = (f32[1000]{0}, f32[8,8]{1,0}) all-reduce(%a, %b), channel_id=2, replica_groups=[2,4]<=[8], to_apply=%add
  %all-gather.3 = s32[8,100]{1,0} all-gather(%c), channel_id=3, replica_groups={}, dimensions={0}
  %reduce-scatter.4 = f32[125]{0} reduce-scatter(%d), channel_id=4, replica_groups=[4,2]<=[2,4]T(1,0), dimensions={0}
  %add.5 = f32[8]{0} add(%e, %f)
}
"""


def test_each_collective_is_read_with_its_group_and_ring_bytes():
  ops = wire_bytes.collectives(HLO)
  assert [op["op"] for op in ops] == ["all-gather", "all-reduce", "all-gather", "reduce-scatter"]
  gather, reduce, gather_all, scatter = ops
  # all-gather: each of the 2 devices contributed 48174 bytes and sends them once.
  assert gather["group"] == [0, 4] and gather["result_bytes"] == 2 * 48174
  assert gather["bytes_sent"] == 48174
  # all-reduce of (1000 + 64) float32 over groups of 4: 2 (P - 1) / P of the buffer.
  assert reduce["group"] == [0, 1, 2, 3] and reduce["dtypes"] == ["f32"]
  assert reduce["bytes_sent"] == pytest.approx(2 * 3 / 4 * 4 * 1064)
  # Empty replica groups: every partition, 7 hops of 400 bytes.
  assert gather_all["group_size"] == 8 and gather_all["bytes_sent"] == 7 * 400
  # Iota groups with a transpose: [[0, 4], [1, 5], ...]; the input is P times the result.
  assert scatter["group"] == [0, 4] and scatter["bytes_sent"] == 1 * 500


def test_groups_are_named_by_the_mesh_axes_they_span():
  shape, names = (2, 4), ("host", "local")
  assert wire_bytes.axis_of_group([0, 4], shape, names) == "host"
  assert wire_bytes.axis_of_group([4, 5, 6, 7], shape, names) == "local"
  assert wire_bytes.axis_of_group(list(range(8)), shape, names) == "host+local"


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
