"""Small-scale replication of the paper's Table 1 on Fashion-MNIST: every optimizer, 5 seeds.

40 trainings (the SGD and SGDm blocks are one training per seed each; 70 before views). Run (512 s
measured here on 2 free CPU cores)::

  python -m examples.image_classification.compare \
    --config=examples/image_classification/configs/fashion_mnist_table1.py --workdir=runs/table1

A small CNN with batch norm on a fixed 5,000-image subset of the training set (test: a fixed 2,000
of the test set), 6 epochs with the learning rate x0.1 after epochs 2 and 4 (the paper's schedule
shape), momentum 0.9, weight decay 5e-4 added to the gradient. Adam and AdaGrad use the learning
rates in ``sweep.learning_rates`` (one guess each from the paper's grid, not tuned here).
Expected (measured here): in the first third SGD 77.7 ± 1.8 % and SGDm 79.4 ± 1.8 % against
80.1-80.7 % for RSGD-* and 80.5-81.6 % for RSGDm-* (paired gains over the base +1.1 to +3.0 points);
in the last third every residual method within 0.1 point of its base but RSGDm-sign (-0.34).
Full table in the example's README.
"""

from examples.common.optimizers import OPTIMIZER_NAMES
from examples.image_classification.configs import fashion_mnist_compare


def get_config():
  config = fashion_mnist_compare.get_config()
  config.train_subset = 5_000
  config.test_subset = 2_000
  config.train_eval_examples = 1_000
  config.batch_size = 64
  config.num_epochs = 6
  config.lr_decay_epochs = (2, 4)
  config.sweep.optimizers = tuple(n for n in OPTIMIZER_NAMES if not n.startswith("adam-"))
  config.sweep.seeds = (0, 1, 2, 3, 4)
  config.sweep.learning_rates.adam = 1e-3
  config.sweep.learning_rates.adagrad = 1e-2
  config.sweep.title = "Fashion-MNIST (5k subset), small CNN: Table 1 replication"
  return config
