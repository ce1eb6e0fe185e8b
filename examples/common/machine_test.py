"""Tests of the machine record."""

import json

from examples.common import machine


def test_describe_names_the_cpu_and_the_jax_versions():
  record = machine.describe()
  json.dumps(record)  # the record goes into results as JSON
  assert record["cpu"] and record["cpu"] != "unknown"
  assert record["cpu_cores"] >= 1
  assert record["jax"] and record["jaxlib"]
  assert record["platform"] == "cpu"


def test_summary_reads_as_one_line():
  line = machine.summary(
    {"cpu": "AMD EPYC", "cpu_cores": 2, "platform": "cpu", "jax": "0.10.2", "jaxlib": "0.10.2"}
  )
  assert line == "AMD EPYC, 2 cores, jax 0.10.2 / jaxlib 0.10.2"
  assert machine.summary({}) == "machine not recorded"
  gpu = {"cpu": "x", "cpu_cores": 16, "platform": "gpu", "devices": "1 x NVIDIA H200"}
  assert "1 x NVIDIA H200" in machine.summary(gpu)
