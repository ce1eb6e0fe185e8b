"""Tiny Penn-Treebank-format files (the AWD-LSTM family's) and a tiny transformer config."""

import pytest

from examples.language_modeling.conftest import write_ptb
from examples.transformer_lm.configs import small


@pytest.fixture
def ptb_dir(tmp_path):
  directory = tmp_path / "ptb"
  directory.mkdir()
  write_ptb(directory, lines=(240, 30, 30))
  return directory


def tiny_config(data_dir, config=None, **overrides):
  """``config`` (default: the small one) shrunk to a model that compiles and trains in seconds."""
  config = small.get_config() if config is None else config
  config.data_source = str(data_dir)
  config.max_train_tokens = 0
  config.max_eval_tokens = 0
  config.context = 8
  config.layers = 1
  config.width = 16
  config.heads = 2
  config.batch_size = 8
  config.eval_batch_size = 8
  config.warmup_steps = 2
  config.learning_rate = 1e-2
  config.num_epochs = 2
  config.evals_per_epoch = 2
  config.num_devices = 1
  config.platform = "cpu"
  config.optimizer = "adamw,adamw-scale@0.1,adamw-sign,adamw-topk"
  config.topk_fraction = 0.1
  for key, value in overrides.items():
    config[key] = value
  return config
