"""The proximity trade-off of the paper's sections 4.2 and 6 on Fashion-MNIST: alpha swept.

SGDm and RSGDm-scale at five alphas (1/2 to 1/256) in the Table-1 setting
(:mod:`fashion_mnist_table1`: 5k-image subset, 6 epochs, learning rate x0.1 after epochs 2 and 4),
5 seeds. The six optimizers share one trajectory, so the sweep is one training per seed::

  python -m examples.image_classification.compare \
    --config=examples/image_classification/configs/fashion_mnist_alpha.py --workdir=runs/alpha

Writes the table (best test accuracy per epoch range per alpha, and each alpha's paired gain over
SGDm) and ``alpha.png`` (the gain against alpha per epoch range). The committed runs, table and
figure are in ``examples/image_classification/results/fashion_mnist_alpha``.
"""

from examples.image_classification.configs import fashion_mnist_table1

ALPHAS = (0.5, 0.25, 0.0625, 0.015625, 0.00390625)


def get_config():
  config = fashion_mnist_table1.get_config()
  config.sweep.optimizers = ("sgdm", *(f"rsgdm-scale@{alpha}" for alpha in ALPHAS))
  config.sweep.seeds = (0, 1, 2, 3, 4)
  config.sweep.title = "Fashion-MNIST (5k subset), small CNN: RSGDm-scale's alpha"
  return config
