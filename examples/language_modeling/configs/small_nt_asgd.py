"""``small.py`` trained until NT-ASGD switches every view by itself (no forced switch epoch).

The four optimizers are views of one training, each with its own trigger on its own validation
loss, its own switch epoch and its own average. Run::

  python -m examples.language_modeling.main \\
    --config=examples/language_modeling/configs/small_nt_asgd.py \\
    --config.optimizer=sgd,rsgd-sign,rsgd-topk,rsgd-scale --workdir=/tmp/lm_nt_asgd

Measured here (the README's Table 2): the triggers fired at epochs 24 (top-k), 33 (SGD, scale) and
42 (sign); after 100 epochs validation / test perplexity 322.86 / 286.11 for SGD + ASGD, 318.58 /
282.14 for (RSGD + RASGD)-sign. About 20 s an epoch alone on two CPU cores.
"""

import ml_collections

from examples.language_modeling.configs import small


def get_config() -> ml_collections.ConfigDict:
  config = small.get_config()
  config.averaging_start_epoch = -1  # only the trigger switches
  config.num_epochs = 100
  return config
