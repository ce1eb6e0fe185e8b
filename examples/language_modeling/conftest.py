"""Tiny Penn-Treebank-format files and a tiny config, shared by this example's tests."""

import numpy as np
import pytest

from examples.language_modeling.configs import small

WORDS = [f"w{i}" for i in range(24)] + ["<unk>", "N"]


def write_ptb(directory, *, lines=(120, 30, 30), seed=0):
  """Writes ptb.{train,valid,test}.txt as Mikolov's files are laid out: a leading space, words
  separated by spaces, a trailing space before each newline."""
  rng = np.random.default_rng(seed)
  texts = {}
  for split, count in zip(("train", "valid", "test"), lines, strict=True):
    rows = []
    for _ in range(count):
      # A learnable pattern: each word is usually followed by the next one.
      start = rng.integers(len(WORDS))
      length = rng.integers(3, 10)
      rows.append(" " + " ".join(WORDS[(start + k) % len(WORDS)] for k in range(length)) + " \n")
    texts[split] = "".join(rows)
    (directory / f"ptb.{split}.txt").write_text(texts[split])
  return texts


@pytest.fixture
def ptb_dir(tmp_path):
  directory = tmp_path / "ptb"
  directory.mkdir()
  write_ptb(directory)
  return directory


def tiny_config(data_dir, **overrides):
  config = small.get_config()
  config.data_source = str(data_dir)
  config.max_train_tokens = 0
  config.max_eval_rows = 0
  config.embed_dim = 8
  config.hidden = 12
  config.num_layers = 2
  config.batch_size = 4
  config.eval_batch_size = 4
  config.test_batch_size = 2
  # Every window (at most bptt + 20 = 26 rows) pads to 32: one compiled shape for train, one for
  # evaluation.
  config.bptt = 6
  config.bptt_bucket = 32
  config.learning_rate = 5.0
  config.num_epochs = 3
  for key, value in overrides.items():
    config[key] = value
  return config
