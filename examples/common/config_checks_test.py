"""One rule for numbers: ranges, and non-finite values refused in every field and after every @."""

import math

import ml_collections
import pytest

from examples.common import config_checks, optimizers
from examples.common.config_checks import FRACTION, POSITIVE, PROBABILITY, Range
from examples.common.errors import UserError

NON_FINITE = [math.nan, math.inf, -math.inf]


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("valid", [POSITIVE, PROBABILITY, FRACTION, Range(), Range(-1)])
def test_no_range_holds_a_non_finite_value(valid, value):
  assert value not in valid


def test_ranges_hold_their_finite_values():
  assert 0.5 in FRACTION and 1 in FRACTION and 0 not in FRACTION
  assert 0 in PROBABILITY and 1 not in PROBABILITY
  assert True not in Range() and "1" not in Range()


def _config(**fields):
  config = ml_collections.ConfigDict(
    {"learning_rate": 0.1, "dropout": 0.0, "model_kwargs": {"scale": 1.0}, "decay": (0.5, 0.1)}
  )
  config.update(fields)
  return config


@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("field", ["learning_rate", "dropout"])
def test_a_non_finite_ranged_field_is_one_line_naming_it(field, value):
  ranges = {"learning_rate": POSITIVE, "dropout": PROBABILITY}
  with pytest.raises(UserError) as error:
    config_checks.check(_config(**{field: value}), ranges)
  message = str(error.value)
  assert f"config.{field}={value} (must be a finite number {ranges[field]})" in message
  assert "\n" not in message and message.endswith("Nothing was written.")


def test_non_finite_fields_without_a_range_nested_and_in_sequences_are_refused():
  config = _config()
  config.model_kwargs.scale = math.nan
  config.decay = (0.5, math.inf)
  with pytest.raises(UserError) as error:
    config_checks.check(config, {"learning_rate": POSITIVE})
  message = str(error.value)
  assert "config.model_kwargs.scale=nan (must be a finite number)" in message
  assert "config.decay=(0.5, inf) (must be a finite number)" in message
  config_checks.check(_config(), {"learning_rate": POSITIVE})  # finite: accepted


@pytest.mark.parametrize("setting", ["nan", "inf", "-inf", "NaN", "Infinity"])
@pytest.mark.parametrize("name", ["rsgdm-topk", "rsgd-scale", "adam-topk"])
def test_a_non_finite_at_value_is_one_line_naming_the_view(name, setting):
  with pytest.raises(UserError) as error:
    optimizers.parse_views(f"{name}@{setting}")
  assert str(error.value) == (
    f"'{name}@{setting}': the value after @ must be a finite number in (0, 1], got {setting}."
  )


@pytest.mark.parametrize("field", ["momentum", "weight_decay"])
@pytest.mark.parametrize("value", NON_FINITE)
def test_the_optimizer_builder_refuses_non_finite_hyperparameters(field, value):
  with pytest.raises(UserError, match=f"{field} must be"):
    optimizers.make_optimizer("sgdm", 0.1, **{field: value})


@pytest.mark.parametrize(
  ("text", "expected"),
  [
    ("1e-2", "0.01"),
    ("0.010", "0.01"),
    (".25", "0.25"),
    ("1", "1"),
    ("1.0", "1"),
    ("1e-05", "1e-05"),
  ],
)
def test_one_spelling_of_an_at_value(text, expected):
  assert config_checks.format_setting(float(text)) == expected


@pytest.mark.parametrize(
  ("spec", "expected"),
  [
    ("sgd, rsgd-sign", "sgd,rsgd-sign"),
    (" sgdm ,rsgdm-topk@1e-2", "sgdm,rsgdm-topk@0.01"),
    ("rsgdm-topk @ 0.050", "rsgdm-topk@0.05"),
    ("adam,adam-scale@0.25", "adam,adam-scale@0.25"),
  ],
)
def test_two_spellings_of_one_list_are_one_list(spec, expected):
  assert optimizers.canonical_spec(spec) == expected
  assert [view.name for view in optimizers.parse_views(spec)] == expected.split(",")


def test_two_spellings_of_one_view_are_a_duplicate():
  with pytest.raises(UserError, match=r"names rsgdm-topk@0\.01 more than once"):
    optimizers.parse_views("sgdm,rsgdm-topk@0.01,rsgdm-topk@1e-2")


def test_a_sweep_groups_names_in_their_one_spelling():
  names = ["sgdm", " rsgdm-topk@1e-2", "adam", "rsgdm-scale@0.50"]
  assert optimizers.group_by_trajectory(names) == [
    ["sgdm", "rsgdm-topk@0.01", "rsgdm-scale@0.5"],
    ["adam"],
  ]
