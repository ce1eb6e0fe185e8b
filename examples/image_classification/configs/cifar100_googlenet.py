"""CIFAR-100, GoogLeNet (CIFAR variant), 300 epochs: the paper's Table 1, right block.

Run (CIFAR-100 extracted under ``$DATA``)::

  python -m examples.image_classification.main \
    --config=examples/image_classification/configs/cifar100_googlenet.py \
    --config.data_dir=$DATA --config.optimizer=rsgdm-scale --config.seed=0 --workdir=runs/googlenet

Expected (paper, Table 1, 5 seeds): best top-1 per epoch range 0-99 / 100-199 / 200-299 of about
57.3 / 78.9 / 80.0 % for sgdm and 73.4 / 79.0 / 80.0 % for rsgdm-scale. Needs an accelerator.
"""

from examples.image_classification.configs import default


def get_config():
  config = default.get_config()
  config.dataset = "cifar100"
  config.model = "googlenet"
  return config
