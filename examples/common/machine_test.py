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


def test_the_cpu_is_told_apart_by_family_model_and_vector_extensions(tmp_path):
  # Two blocks (two processors): the first is read; "AMD EPYC" alone names several generations.
  block = "processor\t: {n}\nmodel name\t: AMD EPYC\ncpu family\t: {family}\nmodel\t\t: 2\n"
  block += "flags\t\t: fpu sse2 avx2 avx512f avx512_bf16 vaes\n\n"
  path = tmp_path / "cpuinfo"
  path.write_text(block.format(n=0, family=26) + block.format(n=1, family=25))
  info = machine._cpuinfo(str(path))
  assert machine._cpu_model(info) == "AMD EPYC"
  assert machine._cpu_id(info) == "family 26 model 2, avx2 avx512f avx512_bf16"
  assert machine._cpu_id(machine._cpuinfo(str(tmp_path / "none"))) is None
  record = {"cpu": "AMD EPYC", "cpu_id": "family 26 model 2, avx2", "cpu_cores": 2}
  assert machine.summary({**record, "jax": "0.10.2", "jaxlib": "0.10.2"}) == (
    "AMD EPYC (family 26 model 2, avx2), 2 cores, jax 0.10.2 / jaxlib 0.10.2"
  )


def test_summary_reads_as_one_line():
  line = machine.summary(
    {"cpu": "AMD EPYC", "cpu_cores": 2, "platform": "cpu", "jax": "0.10.2", "jaxlib": "0.10.2"}
  )
  assert line == "AMD EPYC, 2 cores, jax 0.10.2 / jaxlib 0.10.2"
  assert machine.summary({}) == "machine not recorded"
  gpu = {"cpu": "x", "cpu_cores": 16, "platform": "gpu", "devices": "1 x NVIDIA H200"}
  assert "1 x NVIDIA H200" in machine.summary(gpu)
