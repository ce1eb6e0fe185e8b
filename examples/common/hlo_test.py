"""The HLO reading of :mod:`examples.common.hlo` on hand-written HLO lines (no compilation)."""

import pytest

from examples.common import hlo

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
  ops = hlo.collectives(HLO)
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
  assert hlo.axis_of_group([0, 4], shape, names) == "host"
  assert hlo.axis_of_group([4, 5, 6, 7], shape, names) == "local"
  assert hlo.axis_of_group(list(range(8)), shape, names) == "host+local"
