"""A small AWD-LSTM on Penn Treebank that trains on two CPU cores in minutes.

Same model family, regularization, optimizer, NT-ASGD switch and evaluation as ``default.py``,
scaled down: a 3-layer LSTM of width 96 on 32-dimensional embeddings, the first 100,000 training
tokens as an epoch, BPTT 35, the first 2,000 rows of the validation and test streams (20,000 tokens
each), 20 epochs, and a non-monotone interval of 2. Averaging starts when the NT-ASGD trigger fires,
and after epoch 12 at the latest so that every run has an averaged phase to compare
(``results.json`` says which of the two switched it).

Run (one optimizer, ``sgd`` | ``rsgd-sign`` | ``rsgd-topk`` | ``rsgd-scale``, or several as views of
one training, each in ``<workdir>/<name>/``):

  python -m examples.language_modeling.main \\
    --config=examples/language_modeling/configs/small.py \\
    --config.optimizer=sgd,rsgd-sign,rsgd-topk,rsgd-scale --workdir=/tmp/awd_lstm_small

Expected: validation / test perplexity about 396 / 358 after 20 epochs for each of the four
(measured here before views, with the switch at the epoch-12 cap in every run: in 20 epochs the
validation loss was still falling). ``small_nt_asgd.py`` trains this model until every view's
trigger fires by itself (the README's Table 2). Alone on two CPU cores the four views take about
20 s an epoch.
"""

import ml_collections

from examples.language_modeling.configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.max_train_tokens = 100_000
  config.max_eval_rows = 2_000
  config.embed_dim = 32
  config.hidden = 96
  config.bptt = 35
  config.test_batch_size = 10
  config.num_epochs = 20
  config.nonmono = 2
  config.averaging_start_epoch = 12
  return config
