"""Windows of the word stream: what each epoch sees, and evaluation scoring every target once."""

import numpy as np
import pytest

from examples.language_modeling.input_pipeline import CorpusError
from examples.transformer_lm import input_pipeline

TOKENS = np.arange(1000, dtype=np.int32)  # token i is i: a window's position in the stream shows


def _epoch(seed, epoch, context=8, batch_size=4):
  return list(
    input_pipeline.train_batches(
      TOKENS, context=context, batch_size=batch_size, seed=seed, epoch=epoch
    )
  )


def test_targets_are_the_inputs_shifted_by_one_in_the_stream():
  for batch in _epoch(0, 0):
    np.testing.assert_array_equal(batch.targets, batch.inputs + 1)
    np.testing.assert_array_equal(np.diff(batch.inputs, axis=1), 1)  # contiguous windows
    assert batch.inputs.dtype == np.int32 and batch.mask.all()


def test_an_epoch_has_the_same_step_count_at_every_offset_and_no_window_twice():
  counts = set()
  for epoch in range(12):
    batches = _epoch(3, epoch)
    counts.add(len(batches))
    starts = np.concatenate([b.inputs[:, 0] for b in batches])
    assert len(set(starts)) == len(starts)
    offsets = {int(s) % 9 for s in starts}
    assert len(offsets) == 1  # one offset an epoch, windows of context + 1 = 9 tokens
  assert counts == {input_pipeline.steps_per_epoch(len(TOKENS), 8, 4)}
  assert counts == {(1000 - 7) // 9 // 4}


def test_batches_are_a_pure_function_of_seed_and_epoch():
  a, b = _epoch(5, 2), _epoch(5, 2)
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x.inputs, y.inputs)
  other_epoch = np.concatenate([x.inputs[:, 0] for x in _epoch(5, 3)])
  assert not np.array_equal(np.concatenate([x.inputs[:, 0] for x in a]), other_epoch)


def test_evaluation_scores_every_target_once():
  tokens = np.arange(1, 58, dtype=np.int32)  # 56 targets: 7 windows of 8, the 4th batch padded
  batches = list(input_pipeline.eval_batches(tokens, context=8, batch_size=2))
  assert len(batches) == 4
  scored = np.concatenate([b.targets[b.mask > 0] for b in batches])
  np.testing.assert_array_equal(np.sort(scored), tokens[1:])
  for b in batches:
    real = b.mask > 0
    np.testing.assert_array_equal(b.targets[real], b.inputs[real] + 1)


def test_too_little_text_for_one_batch_is_one_clear_error():
  with pytest.raises(CorpusError, match="fewer than one batch of 64"):
    input_pipeline.steps_per_epoch(500, 32, 64)


def test_an_epoch_from_a_later_batch_is_the_rest_of_the_same_epoch():
  whole = _epoch(7, 1)
  rest = list(
    input_pipeline.train_batches(TOKENS, context=8, batch_size=4, seed=7, epoch=1, start=5)
  )
  assert len(rest) == len(whole) - 5
  for a, b in zip(rest, whole[5:], strict=True):
    np.testing.assert_array_equal(a.inputs, b.inputs)
