"""The compressed sweep's bytes: from the wire formats by hand, and read from the compiled step."""

import math

import pytest

from examples.image_classification import compressed_sweep, testdata
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
