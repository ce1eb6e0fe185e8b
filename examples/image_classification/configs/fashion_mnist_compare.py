"""Fashion-MNIST on a CPU: SGDm against RSGDm-{scale, sign, topk}, 2 seeds each (the README's job).

Run (about 10 minutes on 2 CPU cores; Fashion-MNIST from Debian's ``dataset-fashion-mnist``)::

  python -m examples.image_classification.compare \
    --config=examples/image_classification/configs/fashion_mnist_compare.py --workdir=runs/compare

Prints the table (best test accuracy per third of the epochs, mean ± std over the seeds) and writes
``runs/compare/report/curves.png``. Expected: every method near 88-90 % by the last third; the
residual methods ahead of SGDm in the first third (epochs 0-1), the paper's headline effect.
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
