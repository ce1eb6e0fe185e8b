"""Which trainer a config names: the plain one, or the one with a compressed gradient exchange."""

import ml_collections

from examples.common import compression, skeleton
from examples.image_classification import compressed_train, train


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> skeleton.RunResults:
  """:func:`examples.image_classification.train.train_and_evaluate`, or with
  ``config.grad_compression`` other than ``"none"`` (an invalid value included, which it refuses
  naming the valid forms) :func:`examples.image_classification.compressed_train.train_and_evaluate`.
  """
  if compression.canonical(config.get("grad_compression", compression.NONE)) == compression.NONE:
    return train.train_and_evaluate(config, workdir)
  return compressed_train.train_and_evaluate(config, workdir)
