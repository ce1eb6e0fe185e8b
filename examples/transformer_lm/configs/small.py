"""A small transformer on Penn Treebank words that trains on two CPU cores in about ten minutes.

``default.py`` scaled down: 2 layers of width 128 (4 heads), context 64, 32 windows a step (2,048
tokens), 446 steps an epoch over all 929,589 training tokens, 4 epochs, peak learning rate 2e-3
after 100 warm-up steps; validation and test perplexity on the first 10,000 tokens of each stream,
4 times an epoch. The views are those of ``default.py``.

  python -m examples.transformer_lm.main \\
    --config=examples/transformer_lm/configs/small.py --workdir=/tmp/transformer_lm_small
"""

import ml_collections

from examples.transformer_lm.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.max_eval_tokens = 10_000
  config.context = 64
  config.layers = 2
  config.width = 128
  config.heads = 4
  config.dropout = 0.1
  config.learning_rate = 2e-3
  config.warmup_steps = 100
  config.batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 4
  return config
