"""Fashion-MNIST on a CPU: SGDm against RSGDm-{scale, sign, topk}, 2 seeds each (the README's job).

The four optimizers share one trajectory, so the sweep is one training per seed (2 in all).
Run (342 s measured on 2 CPU cores shared with other jobs; Fashion-MNIST from Debian's
``dataset-fashion-mnist``)::

  python -m examples.image_classification.compare \
    --config=examples/image_classification/configs/fashion_mnist_compare.py --workdir=runs/compare

Prints the table (best test accuracy per third of the epochs, mean ± std over the seeds) and writes
``runs/compare/report/curves.png``. Expected (measured here): first third 84.55 ± 1.70 % for SGDm
against 86.59 / 86.28 / 85.66 % for RSGDm-scale / sign / topk (paired gains over SGDm +2.04, +1.74,
+1.12 points), all four at 88.18-88.21 % in the last third.
"""

import ml_collections

from examples.image_classification.configs import fashion_mnist_cnn


def get_config():
  config = fashion_mnist_cnn.get_config()
  config.model_kwargs.width = 8
  config.model_kwargs.hidden = 64
  config.batch_size = 64
  config.train_subset = 20_000
  config.test_subset = 0  # the whole 10k test set
  config.train_eval_examples = 5_000
  config.num_epochs = 6
  config.lr_decay_epochs = (2, 4)  # the paper's shape: x0.1 at 1/3 and 2/3 of the epochs
  config.log_every_steps = 100
  config.sweep = ml_collections.ConfigDict()
  config.sweep.optimizers = ("sgdm", "rsgdm-scale", "rsgdm-sign", "rsgdm-topk")
  config.sweep.seeds = (0, 1)
  config.sweep.learning_rates = ml_collections.ConfigDict()
  config.sweep.title = "Fashion-MNIST, small CNN: SGDm vs RSGDm"
  return config
