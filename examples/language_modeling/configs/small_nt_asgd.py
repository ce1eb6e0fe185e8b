"""``small.py`` trained until NT-ASGD switches every view by itself (no forced switch epoch).

The four optimizers are views of one training, each with its own trigger on its own validation
loss, its own switch epoch and its own average. Run::

  python -m examples.language_modeling.main \\
    --config=examples/language_modeling/configs/small_nt_asgd.py \\
    --config.optimizer=sgd,rsgd-sign,rsgd-topk,rsgd-scale --workdir=/tmp/lm_nt_asgd

Measured here: see the README's Table 2 (switch epochs per view, all ``nt-asgd``).
"""

import ml_collections

from examples.language_modeling.configs import small


def get_config() -> ml_collections.ConfigDict:
  config = small.get_config()
  config.averaging_start_epoch = -1  # only the trigger switches
  config.num_epochs = 150
  return config
