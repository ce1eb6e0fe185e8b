"""ImageNet, ResNet-18, 90 epochs: the paper's Table 1, ImageNet block (left).

Run (``$DATA`` holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``)::

  python -m examples.image_classification.main \
    --config=examples/image_classification/configs/imagenet_resnet18.py \
    --config.data_dir=$DATA --config.optimizer=rsgdm-scale --workdir=runs/r18

Expected (paper, Table 1, one run): best top-1 per epoch range 0-29 / 30-59 / 60-89 of about
49.3 / 65.0 / 70.1 % for sgdm and 55.8 / 66.0 / 70.0 % for rsgdm-scale. Needs accelerators.
"""

from examples.image_classification.configs import default


def get_config():
  config = default.get_config()
  config.dataset = "imagenet"
  config.model = "resnet18"
  config.num_epochs = 90
  config.lr_decay_epochs = (30, 60)
  config.batch_size = 256
  config.weight_decay = 1e-4
  config.num_workers = 16
  return config
