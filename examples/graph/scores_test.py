"""Tests of the losses and scores against scikit-learn and NumPy formulas."""

import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score

from examples.graph.scores import accuracy, masked_loss, micro_f1


@pytest.fixture(scope="module")
def rng():
  return np.random.default_rng(0)


def test_multilabel_micro_f1_matches_sklearn(rng):
  logits = rng.normal(size=(50, 121))
  labels = (rng.random((50, 121)) < 0.3).astype(np.float32)
  expected = f1_score(labels.astype(int), (logits > 0).astype(int), average="micro")
  assert micro_f1(logits, labels, multilabel=True) == pytest.approx(expected)


def test_multiclass_micro_f1_is_accuracy(rng):
  logits = rng.normal(size=(80, 7))
  classes = rng.integers(0, 7, size=80)
  labels = np.eye(7)[classes]
  expected = accuracy_score(classes, logits.argmax(1))
  assert micro_f1(logits, labels, multilabel=False) == pytest.approx(expected)
  assert accuracy(logits, labels, multilabel=False) == pytest.approx(expected)
  assert f1_score(classes, logits.argmax(1), average="micro") == pytest.approx(expected)


def test_multilabel_accuracy_counts_node_label_pairs(rng):
  logits = rng.normal(size=(10, 4))
  labels = (rng.random((10, 4)) < 0.5).astype(np.float32)
  assert accuracy(logits, labels, multilabel=True) == pytest.approx(np.mean((logits > 0) == labels))


def test_micro_f1_with_nothing_predicted_or_true():
  assert micro_f1(-np.ones((3, 2)), np.zeros((3, 2)), multilabel=True) == 0.0


def _sigmoid_bce(z, y):
  return -(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))


def test_masked_losses_match_numpy(rng):
  logits = rng.normal(size=(6, 5)).astype(np.float32)
  multi = (rng.random((6, 5)) < 0.5).astype(np.float32)
  one_hot = np.eye(5, dtype=np.float32)[rng.integers(0, 5, size=6)]
  mask = np.array([1, 0, 1, 1, 0, 0], np.float32)
  keep = mask > 0
  expected_multi = _sigmoid_bce(logits, multi).mean(axis=1)[keep].mean()
  got = masked_loss(jnp.asarray(logits), jnp.asarray(multi), jnp.asarray(mask), multilabel=True)
  assert float(got) == pytest.approx(expected_multi, rel=1e-5)
  log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  expected_single = -(one_hot * log_softmax).sum(axis=1)[keep].mean()
  got = masked_loss(jnp.asarray(logits), jnp.asarray(one_hot), jnp.asarray(mask), multilabel=False)
  assert float(got) == pytest.approx(expected_single, rel=1e-5)
