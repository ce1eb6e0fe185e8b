"""A config's fields by dotted name, and the config as ``config.json`` holds it."""

import ml_collections

from examples.common import config_record


def _config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.lr = 0.1
  config.decay_epochs = (3, 6)
  config.model_kwargs = ml_collections.ConfigDict({"width": 2, "inner": {"depth": 1}})
  return config


def test_leaves_by_dotted_name_in_order():
  assert config_record.flat_fields(_config()) == {
    "lr": 0.1,
    "decay_epochs": (3, 6),
    "model_kwargs.width": 2,
    "model_kwargs.inner.depth": 1,
  }


def test_groups_come_before_their_fields():
  nested = {"lr": 0.1, "model_kwargs": {"width": 2, "inner": {"depth": 1}}, "seed": 0}
  assert list(config_record.flat_fields(nested, groups=True)) == [
    "lr",
    "model_kwargs",
    "model_kwargs.width",
    "model_kwargs.inner",
    "model_kwargs.inner.depth",
    "seed",
  ]


def test_the_json_record_reads_back_with_the_same_leaves():
  record = config_record.as_json(_config())
  assert record["decay_epochs"] == [3, 6]  # a tuple becomes a JSON list
  assert config_record.flat_fields(record) == {
    "lr": 0.1,
    "decay_epochs": [3, 6],
    "model_kwargs.width": 2,
    "model_kwargs.inner.depth": 1,
  }
