"""Fashion-MNIST on a CPU: SGDm against RSGDm-{scale, sign, topk}, 3 seeds (the README's job).

The whole 60k training set, 3 epochs with the learning rate x0.1 after epochs 1 and 2 (the paper's
schedule shape), the whole 10k test set. The four optimizers share one trajectory, so the sweep is
one training per seed (3 in all). Run (Fashion-MNIST from Debian's ``dataset-fashion-mnist``)::

  python -m examples.image_classification.compare \
    --config=examples/image_classification/configs/fashion_mnist_compare.py --workdir=runs/compare

Prints the table (best test accuracy per third of the epochs, mean ± std over the seeds) and each
residual view's paired gain over SGDm, and writes ``runs/compare/report/curves.png``. The measured
time and numbers are in the README.
"""

import ml_collections

from examples.image_classification.configs import fashion_mnist_cnn


def get_config():
  config = fashion_mnist_cnn.get_config()
  config.model_kwargs.width = 8
  config.model_kwargs.hidden = 64
  config.batch_size = 128
  config.train_subset = 0  # the whole 60k training set
  config.test_subset = 0  # the whole 10k test set
  config.train_eval_examples = 2_000
  config.num_epochs = 3
  config.lr_decay_epochs = (1, 2)  # the paper's shape: x0.1 at 1/3 and 2/3 of the epochs
  config.log_every_steps = 100
  config.sweep = ml_collections.ConfigDict()
  config.sweep.optimizers = ("sgdm", "rsgdm-scale", "rsgdm-sign", "rsgdm-topk")
  config.sweep.seeds = (0, 1, 2)
  config.sweep.learning_rates = ml_collections.ConfigDict()
  config.sweep.title = "Fashion-MNIST (60k), small CNN: SGDm vs RSGDm"
  return config
