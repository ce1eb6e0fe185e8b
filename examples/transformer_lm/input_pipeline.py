"""Penn Treebank for a transformer: fixed-length windows of the word stream, shuffled per epoch.

The corpus is the AWD-LSTM family's (:func:`examples.language_modeling.input_pipeline.load_corpus`:
the same files or ``treebank`` package, the same vocabulary of 10,000 words plus ``<eos>``), so the
two families' perplexities are over the same tokens.

Training: each epoch starts the windows at a random offset in ``[0, context)`` (so window borders
move between epochs), cuts the stream into non-overlapping windows of ``context + 1`` tokens (inputs
are the first ``context``, targets the last ``context``), shuffles them and yields ``batch_size`` at a
time, dropping the remainder. The number of steps is the same every epoch (the offset can cost a
window), which keeps the learning-rate schedule and resume arithmetic exact. Everything is a pure
function of (seed, epoch), so a resumed run sees the batches an uninterrupted one would.

Evaluation: windows of ``context`` targets that cover every target of the split exactly once, the
last one padded and masked; each window starts without earlier context (as the loss of a model
trained on windows of that length measures it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from examples.language_modeling.input_pipeline import CorpusError


@dataclasses.dataclass(frozen=True)
class Batch:
  """``inputs`` and ``targets`` ``(batch, context)`` int32; ``mask`` float32, 0 on padding."""

  inputs: np.ndarray
  targets: np.ndarray
  mask: np.ndarray


def steps_per_epoch(num_tokens: int, context: int, batch_size: int) -> int:
  """Batches in every epoch: the windows left after the largest offset, in whole batches."""
  windows = (num_tokens - (context - 1)) // (context + 1)
  steps = windows // batch_size
  if steps < 1:
    raise CorpusError(
      f"{num_tokens} training tokens make {max(windows, 0)} windows of {context + 1}, fewer than "
      f"one batch of {batch_size}: lower config.batch_size or config.context, or raise "
      "config.max_train_tokens."
    )
  return steps


def train_batches(
  tokens: np.ndarray, *, context: int, batch_size: int, seed: int, epoch: int, start: int = 0
) -> Iterator[Batch]:
  """The shuffled training batches of ``epoch`` (see the module docstring), from batch ``start``
  on (the earlier ones are not built)."""
  steps = steps_per_epoch(len(tokens), context, batch_size)
  rng = np.random.default_rng([seed, epoch])
  offset = int(rng.integers(0, context))
  windows = (len(tokens) - offset) // (context + 1)
  stream = tokens[offset : offset + windows * (context + 1)].reshape(windows, context + 1)
  order = rng.permutation(windows)[: steps * batch_size].reshape(steps, batch_size)
  mask = np.ones((batch_size, context), np.float32)
  for rows in order[start:]:
    chunk = stream[rows]
    yield Batch(chunk[:, :-1].astype(np.int32), chunk[:, 1:].astype(np.int32), mask)


def eval_batches(tokens: np.ndarray, *, context: int, batch_size: int) -> Iterator[Batch]:
  """Batches that score each of ``tokens[1:]`` once, the last window and batch padded and masked.

  Padded rows and positions have ``mask`` 0, so a masked sum over all batches divided by the
  mask's sum is the mean over the split's ``len(tokens) - 1`` targets.
  """
  targets = len(tokens) - 1
  windows = -(-targets // context)
  padded = np.zeros(windows * context + 1, np.int32)
  padded[: len(tokens)] = tokens
  inputs = np.stack([padded[w * context : (w + 1) * context] for w in range(windows)])
  outputs = np.stack([padded[w * context + 1 : (w + 1) * context + 1] for w in range(windows)])
  mask = (np.arange(windows * context).reshape(windows, context) < targets).astype(np.float32)
  for start in range(0, windows, batch_size):
    rows = slice(start, start + batch_size)
    fill = batch_size - len(inputs[rows])
    pad = ((0, fill), (0, 0))
    yield Batch(np.pad(inputs[rows], pad), np.pad(outputs[rows], pad), np.pad(mask[rows], pad))
