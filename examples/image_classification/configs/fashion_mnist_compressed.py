"""Compressed data parallelism on Fashion-MNIST in the Table-1 setting: what it does to training.

The Table-1 setting (:mod:`fashion_mnist_table1`: the small CNN with batch norm, a fixed 5,000-image
training subset, 6 epochs, batch 64, learning rate 0.1 x0.1 after epochs 2 and 4, momentum 0.9,
weight decay 5e-4) on 8 CPU devices (8 examples a device and step), with four gradient exchanges
(``config.grad_compression``): the exact mean (``none``), scaled sign with and without error
feedback (``sign``, ``sign-noef``) and top-k 1% with error feedback (``topk@0.01``). Each training
is SGDm with an RSGDm-scale view (views cost no extra training), 3 seeds: 12 trainings. Run::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m \
    examples.image_classification.compressed_sweep \
    --config=examples/image_classification/configs/fashion_mnist_compressed.py \
    --workdir=runs/compressed

Writes ``runs/compressed/report/table.md`` and ``curves.png``; the measured table is in the
example's README and in ``docs/compressed.md``.
"""

from examples.image_classification.configs import fashion_mnist_table1


def get_config():
  config = fashion_mnist_table1.get_config()
  config.num_devices = 8
  config.platform = "cpu"
  config.log_every_steps = 20
  config.sweep.optimizers = ("sgdm", "rsgdm-scale")
  config.sweep.seeds = (0, 1, 2)
  config.sweep.grad_compressions = ("none", "sign", "sign-noef", "topk@0.01")
  config.sweep.title = (
    "Fashion-MNIST (5k subset), small CNN, 8 devices: compressed gradient exchange"
  )
  return config
