"""Penn Treebank reading, numbering, batchifying and BPTT windows, on tiny generated files."""

import numpy as np
import pytest

from examples.language_modeling import input_pipeline
from examples.language_modeling.conftest import write_ptb


def test_tokens_vocabulary_and_eos_follow_awd_lstm(tmp_path):
  texts = write_ptb(tmp_path)
  corpus = input_pipeline.load_corpus(str(tmp_path))
  for split in ("train", "valid", "test"):
    words = [w for line in texts[split].splitlines() for w in [*line.split(), "<eos>"]]
    ids = getattr(corpus, split)
    assert ids.dtype == np.int32
    assert [corpus.vocab[i] for i in ids] == words
  # Ids are given in order of first appearance, train first, as AWD-LSTM's Dictionary does.
  stream = [
    w
    for split in ("train", "valid", "test")
    for line in texts[split].splitlines()
    for w in [*line.split(), "<eos>"]
  ]
  assert corpus.vocab == tuple(dict.fromkeys(stream))


def test_max_train_tokens_keeps_the_start(tmp_path):
  write_ptb(tmp_path)
  full = input_pipeline.load_corpus(str(tmp_path))
  cut = input_pipeline.load_corpus(str(tmp_path), max_train_tokens=50)
  np.testing.assert_array_equal(cut.train, full.train[:50])
  assert cut.vocab == full.vocab


def test_the_installed_treebank_package_gives_mikolovs_counts():
  corpus = input_pipeline.load_corpus("treebank")
  assert (len(corpus.train), len(corpus.valid), len(corpus.test)) == (929_589, 73_760, 82_430)
  assert corpus.vocab_size == 10_000


def test_missing_or_wrong_sources_say_what_to_do(tmp_path):
  write_ptb(tmp_path)
  (tmp_path / "ptb.test.txt").unlink()
  with pytest.raises(FileNotFoundError, match=r"ptb\.test\.txt is missing"):
    input_pipeline.load_corpus(str(tmp_path))
  with pytest.raises(ValueError, match="neither 'treebank' nor a directory"):
    input_pipeline.load_corpus(str(tmp_path / "nowhere"))
  write_ptb(tmp_path)
  (tmp_path / "ptb.valid.txt").write_bytes(b"\xff\xfe\x00 binary")
  with pytest.raises(ValueError, match=r"ptb\.valid\.txt is not UTF-8 .*good copy"):
    input_pipeline.load_corpus(str(tmp_path))


def test_batchify_cuts_the_stream_into_columns():
  data = input_pipeline.batchify(np.arange(23), 4)
  assert data.shape == (5, 4)
  np.testing.assert_array_equal(data[:, 1], np.arange(5, 10))  # column j is a contiguous run
  with pytest.raises(ValueError, match="too few"):
    input_pipeline.batchify(np.arange(5), 4)


def test_train_windows_cover_the_stream_once_with_awd_lengths():
  data = input_pipeline.batchify(np.arange(4000), 4)
  windows = list(
    input_pipeline.train_windows(data, bptt=20, rng=np.random.default_rng(3), bucket=8, max_len=40)
  )
  inputs = np.concatenate([w.inputs[: w.seq_len] for w in windows])
  targets = np.concatenate([w.targets[: w.seq_len] for w in windows])
  np.testing.assert_array_equal(inputs, data[: len(inputs)])
  np.testing.assert_array_equal(targets, data[1 : len(inputs) + 1])
  assert len(inputs) >= len(data) - 2  # every row but the last is an input
  lengths = np.array([w.seq_len for w in windows[:-1]])
  assert lengths.min() >= 5 and lengths.max() <= 40
  assert 14 < lengths.mean() < 21  # mostly around 20, sometimes around 10
  for w in windows:
    assert w.inputs.shape[0] % 8 == 0 and w.inputs.shape == w.mask.shape
    assert w.mask.sum() == w.seq_len * 4 and w.mask[: w.seq_len].all()


def test_eval_windows_predict_every_target_once():
  data = input_pipeline.batchify(np.arange(403), 3)
  windows = list(input_pipeline.eval_windows(data, bptt=10, bucket=4))
  assert sum(w.seq_len for w in windows) == len(data) - 1
  targets = np.concatenate([w.targets[: w.seq_len] for w in windows])
  np.testing.assert_array_equal(targets, data[1:])
