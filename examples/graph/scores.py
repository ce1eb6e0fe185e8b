"""Losses and node-classification scores (masked cross-entropies, micro-F1, accuracy).

Multi-label graphs (PPI) use an independent sigmoid per label and predict a label where its logit is
positive; multi-class graphs use a softmax and predict the arg-max class, so their micro-F1 equals
accuracy. Both follow the public Cluster-GCN code (``metrics.py``, ``utils.calc_f1``).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax


def masked_loss(
  logits: jax.Array, labels: jax.Array, mask: jax.Array, *, multilabel: bool
) -> jax.Array:
  """Mean cross-entropy over the nodes where ``mask`` is 1 (per-label mean for multi-label)."""
  if multilabel:
    per_node = optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=-1)
  else:
    per_node = optax.softmax_cross_entropy(logits, labels)
  mask = mask.astype(per_node.dtype)
  return jnp.sum(per_node * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def predictions(logits: np.ndarray, *, multilabel: bool) -> np.ndarray:
  """0/1 predictions ``[N, C]``: positive logits (multi-label) or the arg-max one-hot."""
  logits = np.asarray(logits)
  if multilabel:
    return logits > 0
  return np.eye(logits.shape[-1], dtype=bool)[np.argmax(logits, axis=-1)]


def micro_f1(logits: np.ndarray, labels: np.ndarray, *, multilabel: bool) -> float:
  """Micro-averaged F1: ``2 TP / (2 TP + FP + FN)`` pooled over all nodes and labels."""
  predicted = predictions(logits, multilabel=multilabel)
  truth = np.asarray(labels) > 0.5
  true_pos = np.sum(predicted & truth)
  false_pos = np.sum(predicted & ~truth)
  false_neg = np.sum(~predicted & truth)
  denominator = 2 * true_pos + false_pos + false_neg
  return float(2 * true_pos / denominator) if denominator else 0.0


def accuracy(logits: np.ndarray, labels: np.ndarray, *, multilabel: bool) -> float:
  """Multi-class: fraction of nodes whose arg-max is right; multi-label: of (node, label) pairs."""
  predicted = predictions(logits, multilabel=multilabel)
  truth = np.asarray(labels) > 0.5
  if multilabel:
    return float(np.mean(predicted == truth))
  return float(np.mean(np.argmax(predicted, axis=-1) == np.argmax(truth, axis=-1)))
