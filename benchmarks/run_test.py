"""Smoke test: the benchmark entry point runs at its tiny size and writes a well-formed report.

No timing is asserted (timings belong to the benchmark, not to CI); only the shape of the output.
"""

import json
import math
import pathlib

import pytest

from benchmarks import run

pytestmark = pytest.mark.long


def test_tiny_benchmark_writes_table_and_json(tmp_path, capsys):
  out = tmp_path / "results.json"
  run.main(["--size", "tiny", "--out", str(out), "--cnn-batch", "2"])
  table = capsys.readouterr().out
  results = json.loads(out.read_text())

  # A note line may come first (for example when torch is absent and its rows are skipped).
  header = next(line for line in table.splitlines() if line.startswith("|"))
  assert header == "| what | goal | measured | met |"
  assert results["size"] == "tiny"
  assert results["machine"]["jax"] and results["machine"]["device_kind"]
  assert results["bandwidth"]["bytes_per_second"] > 0
  goals = results["goals"]
  assert [row["what"] for row in goals] == [goal.what(results) for goal in run.goals.GOALS]
  assert len(goals) == 13
  for row in goals:
    assert set(row) == {"what", "goal", "value", "met"}
    assert row["met"] in {"yes", "no", "n/a"}
    assert row["value"] is None or (math.isfinite(row["value"]) and row["value"] > 0)
    assert row["what"] in table
  optimizers = results["resnet50_tree"]["optimizers"]
  assert set(optimizers) == {
    "sgdm",
    "residual_scale",
    "residual_sign",
    "residual_topk",
    "residual_scale_bf16",
  }
  for name in ("sgdm", "residual_scale", "residual_sign", "residual_topk"):
    row = optimizers[name]
    assert row["looped_step_seconds"] > 0 and row["looped_fraction_of_bandwidth"] > 0
  # The memory rows are exact: one params-sized residual (half in bfloat16), plus the step count.
  params_bytes = results["resnet50_tree"]["params_bytes"]
  assert optimizers["residual_scale"]["memory"]["state_bytes_beyond_sgdm"] == params_bytes + 4
  assert optimizers["residual_scale_bf16"]["memory"]["state_bytes_beyond_sgdm"] == (
    params_bytes // 2 + 4
  )
  assert results["top_k"]["exact_match_with_lax"] is True
  cnn = results["cnn_step"]
  assert cnn["batch"] == 2
  # The residual adds one array per parameter array, plus its step count.
  arrays = cnn["state_arrays"]
  assert arrays["rsgdm"] - arrays["sgdm"] == cnn["param_arrays"] + 1
  assert cnn["pipelined_steps"] > 1 and cnn["control_ratio"] > 0
  for key in ("sgdm_seconds", "rsgdm_seconds", "blocked_sgdm_seconds", "blocked_rsgdm_seconds"):
    assert math.isfinite(cnn[key]) and cnn[key] > 0
  schemes = cnn["schemes"]
  assert set(schemes) == {"sgdm", "residual_scale", "residual_sign", "residual_topk"}
  assert schemes["sgdm"]["step_ratio"] == 1.0 and schemes["sgdm"]["compile_ratio"] == 1.0
  for row in schemes.values():
    assert row["seconds"] > 0 and row["compile_seconds"] > 0 and row["temp_bytes"] >= 0
  lines = table.splitlines()
  first = lines.index("| whole step | ms a step | x sgdm | compile s | x sgdm | temp MB |") + 2
  assert [line.split(" | ")[0] for line in lines[first : first + 4]] == [
    f"| {name}" for name in schemes
  ]
  # The FSDP rows (8 CPU devices, in a subprocess): nothing all-gathered, top-k all-reduces only
  # its counters, and each residual adds its parameter's shard (plus the replicated step count).
  sharded = results["fsdp"]
  tiny = run.SIZES["tiny"]
  shapes = run.fsdp.tree_shapes(tiny.width_scale, tiny.stage_blocks, tiny.fsdp_leaves)
  assert sharded["devices"] == 8 and sharded["leaves"] == len(shapes)
  # The smoke tree still has both kinds of leaf: replicated (the stem) and split (the last stage).
  assert 0 < sharded["replicated_leaves"] < sharded["leaves"]
  rows = sharded["optimizers"]
  assert set(rows) == set(schemes)
  for name, row in rows.items():
    assert row["collective_bytes"]["all-gather"] == 0, name
    assert row["step_seconds"] > 0 and row["step_ratio"] > 0 and row["compile_ratio"] > 0
  assert rows["sgdm"]["collective_bytes"]["all-reduce"] == 0
  assert rows["residual_topk"]["collective_bytes"]["all-reduce"] > 0
  sgdm_state = rows["sgdm"]["state_bytes_per_device"]
  assert sgdm_state == rows["sgdm"]["params_bytes_per_device"] < sharded["params_bytes"] / 4
  for name in ("residual_scale", "residual_sign", "residual_topk"):
    assert rows[name]["state_bytes_per_device"] == 2 * sgdm_state + 4, name
  first = lines.index(
    "| fsdp step | ms | x sgdm | compile s | x sgdm | all-gathered MiB | all-reduced KiB | "
    "state MiB / device | temp MiB / device |"
  )
  assert [line.split(" | ")[0] for line in lines[first + 2 : first + 6]] == [
    f"| {name}" for name in rows
  ]
  # The compressed exchange (8 CPU devices, in a subprocess): what the compiled HLO sends, per
  # device and step, against the float32 all-reduce of the same gradients. Sign sends 1 bit and
  # top-k 1% 8 bytes per 100 entries where the ring all-reduce sends 2 (P - 1) / P x 4 bytes.
  wire = results["wire_bytes"]
  assert set(wire["meshes"]) == {"data8", "host2xlocal4"}
  for layout, mesh in wire["meshes"].items():
    rows = mesh["exchanges"]
    assert set(rows) == {"psum_f32", "sign_ef", "topk1pct_ef"}, layout
    participants = mesh["participants"]
    for name, expected in (("sign_ef", 64 / participants), ("topk1pct_ef", 100 / participants)):
      assert rows[name]["slow_axis_bytes_ratio"] == pytest.approx(expected, rel=0.05), (
        layout,
        name,
      )
      assert rows[name]["step_seconds"] > 0 and rows[name]["step_ratio"] > 0
  header = "| mesh | exchange | MiB sent / device | x fewer | slow-axis MiB | x fewer (slow) | "
  assert [line.split(" | ")[:2] for line in lines if line.startswith("| data8 |")] == [
    ["| data8", name] for name in ("psum_f32", "sign_ef", "topk1pct_ef")
  ]
  assert any(line.startswith(header) for line in lines)


def test_batch_must_be_positive(capsys):
  with pytest.raises(SystemExit):
    run.main(["--size", "tiny", "--cnn-batch", "0"])
  assert "must be a positive integer, got 0" in capsys.readouterr().err


def test_machine_records_the_settings_that_change_timings(monkeypatch):
  monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=1")
  monkeypatch.delenv("LD_PRELOAD", raising=False)
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  assert run.machine()["settings"] == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}


def test_scaling_devices_are_positive_counts(capsys):
  assert run.device_counts("8,16, 64") == (8, 16, 64)
  with pytest.raises(SystemExit):
    run.main(["--size", "tiny", "--scaling-devices", "8,0"])
  assert "must be a positive integer, got 0" in capsys.readouterr().err


def test_the_report_has_a_row_per_device_count_when_scaling_ran():
  """The committed run record with the committed scaling entry spliced in: one row per device
  count and exchange, each with its ratio to the float32 all-reduce."""
  root = pathlib.Path(run.__file__).parent / "results"
  results = json.loads((root / "cpu.json").read_text())
  scaling = json.loads((root / "wire-bytes-cpu.json").read_text())["scaling"]
  results["wire_bytes"]["scaling"] = scaling
  table = run.render.markdown(results, with_goals=False)
  lines = table.splitlines()
  for row in scaling["rows"]:
    exchange = row["exchanges"]["sign_two_phase"]
    (line,) = [x for x in lines if x.startswith(f"| {row['devices']} | sign_two_phase | ")]
    assert line.split(" | ")[3] == f"{exchange['bytes_ratio']:.1f}"
