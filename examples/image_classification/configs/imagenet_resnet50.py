"""ImageNet, ResNet-50, 90 epochs: the paper's Table 1, ImageNet block (right) and Figure 4.

Run (``$DATA`` holds ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``)::

  python -m examples.image_classification.main \
    --config=examples/image_classification/configs/imagenet_resnet50.py \
    --config.data_dir=$DATA --config.optimizer=rsgdm-scale --workdir=runs/r50

Expected (paper, Table 1, one run): best top-1 per epoch range 0-29 / 30-59 / 60-89 of about
54.1 / 70.8 / 75.8 % for sgdm and 61.7 / 71.9 / 75.9 % for rsgdm-scale. Needs accelerators.
"""

from examples.image_classification.configs import imagenet_resnet18


def get_config():
  config = imagenet_resnet18.get_config()
  config.model = "resnet50"
  return config
