"""Fashion-MNIST, small CNN with batch norm, on a CPU: one run of one optimizer.

Run (Fashion-MNIST from Debian's ``dataset-fashion-mnist``)::

  python -m examples.image_classification.main \
    --config=examples/image_classification/configs/fashion_mnist_cnn.py \
    --config.optimizer=rsgdm-scale --workdir=runs/fmnist

Expected: about 90 % test accuracy after 6 epochs of the full training set.
"""

from examples.image_classification.configs import default


def get_config():
  config = default.get_config()
  config.dataset = "fashion_mnist"
  config.data_dir = ""  # "" : /usr/share/datasets/fashion-mnist
  config.model = "small_cnn"
  config.model_kwargs.width = 16
  config.model_kwargs.hidden = 128
  config.model_kwargs.use_batch_norm = True
  config.num_epochs = 6
  config.lr_decay_epochs = (2, 4)
  config.batch_size = 128
  config.weight_decay = 5e-4
  config.train_eval_examples = 10_000
  return config
