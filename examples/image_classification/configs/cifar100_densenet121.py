"""CIFAR-100, DenseNet-121 (growth rate 32), 300 epochs: the paper's Table 1, left block.

Run (CIFAR-100 binary or python version extracted under ``$DATA``)::

  python -m examples.image_classification.main \
    --config=examples/image_classification/configs/cifar100_densenet121.py \
    --config.data_dir=$DATA --config.optimizer=rsgdm-scale --config.seed=0 --workdir=runs/d121

Expected (paper, Table 1, 5 seeds): best top-1 per epoch range 0-99 / 100-199 / 200-299 of about
62.4 / 78.5 / 79.9 % for sgdm and 72.9 / 78.5 / 79.9 % for rsgdm-scale. Needs an accelerator.
"""

from examples.image_classification.configs import default


def get_config():
  config = default.get_config()
  config.dataset = "cifar100"
  config.model = "densenet121"
  return config
