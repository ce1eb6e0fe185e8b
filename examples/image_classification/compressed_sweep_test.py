"""The compressed sweep's bytes: from the wire formats by hand, and read from the compiled step."""

import math

import pytest

from examples.common import report
from examples.image_classification import compressed_sweep, testdata
from examples.image_classification.configs import fashion_mnist_compressed_recipe
from examples.image_classification.train_test import tiny_config

SHAPES = [(3, 3, 1, 4), (4,), (100, 10)]  # 36 + 4 + 1000 = 1040 entries in 3 leaves


@pytest.mark.parametrize(
  ("value", "want"),
  [
    ("none", 2 * 3 / 4 * 4 * 1040),  # float32 ring all-reduce, 4 devices
    ("sign", 3 * (1040 // 8 + 4 * 3)),  # 130 bytes of bits + 3 float32 scales, from 3 peers
    ("sign-noef", 3 * (130 + 12)),
    ("topk@0.01", 3 * 8 * (1 + 1 + 10)),  # max(1, round(0.01 n)) pairs per leaf
  ],
)
def test_gradient_bytes_from_the_formats(value, want):
  assert compressed_sweep.gradient_bytes(value, SHAPES, 4) == pytest.approx(want)


def test_labels_name_the_error_feedback():
  assert compressed_sweep.exchange_label("topk@0.01") == "top-1% + EF"
  assert compressed_sweep.exchange_label("topk-noef@0.05") == "top-5%, no EF"
  assert compressed_sweep.exchange_label("sign-noef") == "sign, no EF"


def test_the_compiled_steps_send_what_the_formats_say(tmp_path):
  """Read off the HLO of the trainer's step on 4 devices: the sign step sends its packed bits by
  all-gather (plus batch norm's moments and the loss, a few hundred bytes), far fewer bytes than
  the float32 all-reduce of the uncompressed step."""
  testdata.write_fashion_mnist(str(tmp_path), train=64, test=24, size=8)
  measured = {}
  for value in ("none", "sign"):
    config = tiny_config(str(tmp_path), optimizer="sgdm,rsgdm-scale", grad_compression=value)
    config.num_devices = 4
    measured[value] = compressed_sweep.step_bytes(config)
  none, sign = measured["none"], measured["sign"]
  assert "all-gather" in sign["hlo_ops"] and "all-gather" not in none["hlo_ops"]
  assert none["hlo_bytes"] >= none["gradient_bytes"]
  assert sign["gradient_bytes"] <= sign["hlo_bytes"] < sign["gradient_bytes"] + 1024
  assert none["entries"] == sign["entries"] and math.isclose(
    none["gradient_bytes"], 2 * 3 / 4 * 4 * none["entries"]
  )
  assert none["hlo_bytes"] / sign["hlo_bytes"] > 4


def _sweep_config():
  """The recipe sweep's config: named variants next to plain ``grad_compression`` names."""
  return fashion_mnist_compressed_recipe.get_config()


def test_variants_set_their_fields_seeds_and_labels():
  config = _sweep_config()
  assert compressed_sweep.overrides(config, "none") == {"grad_compression": "none"}
  assert compressed_sweep.overrides(config, "topk_two_phase") == {
    "grad_compression": "topk@0.01",
    "compression_exchange": "two_phase",
  }
  assert compressed_sweep.seeds_of(config, "none") == (0, 1, 2)
  assert compressed_sweep.seeds_of(config, "topk_two_phase") == (0,)
  assert compressed_sweep.exchange_label("topk_two_phase", config) == "top-1% + EF, two-phase"
  run = compressed_sweep.run_config(config, "sign_recipe")
  assert (run.grad_compression, run.compression_exchange, run.compression_block_size) == (
    "sign",
    "two_phase",
    256,
  )
  assert run.compression_exact_below == 1000 and run.compression_exact_steps == 0


def test_the_table_pairs_each_exchange_with_the_exact_mean_seed_by_seed():
  """A one-seed variant is compared with the exact mean's run of the same seed, not its mean."""
  config = _sweep_config()
  with config.unlocked():
    config.num_epochs = 3
    config.sweep.grad_compressions = ("none", "topk_two_phase")

  def run(seed, accuracies, **extra):
    records = [{"epoch": e, "test_accuracy": a, **extra} for e, a in enumerate(accuracies)]
    return report.Run(f"seed{seed}", {"seed": seed, "optimizer": "sgdm"}, records)

  groups = {
    "exact mean: sgdm": [run(0, [0.5, 0.6, 0.7]), run(1, [0.5, 0.6, 0.9])],
    "top-1% + EF, two-phase: sgdm": [run(0, [0.4, 0.5, 0.65], memory_ratio=0.5)],
  }
  wire = {
    name: {"hlo_bytes": b, "gradient_bytes": None, "devices": 8, "entries": 10, "leaves": 2}
    for name, b in (("none", 800.0), ("topk_two_phase", 20.0))
  }
  table = compressed_sweep.make_table(config, groups, wire)
  assert "| top-1% + EF, two-phase | sgdm | 1 | -10.00 ± 0.00 | -10.00 ± 0.00 | -5.00 ± 0.00 |" in (
    table
  )
  assert "| 0.50 | 0.0000 | - | 40.0 |" in table  # memory ratio, MiB, no format count, 40x
