"""The paper's AWD-LSTM run on Penn Treebank (section 7.1, Table 2): 3-layer AWD-LSTM, 500 epochs,
learning rate 30, the rest as in the public AWD-LSTM code's PTB command
(``python main.py --batch_size 20 --data data/penn --dropouti 0.4 --dropouth 0.25 --seed 141
--epoch 500``).

Run (one optimizer; ``sgd`` is SGD + ASGD, ``rsgd-sign``/``rsgd-topk``/``rsgd-scale`` are
RSGD + RASGD with that residual scheme):

  python -m examples.language_modeling.main \\
    --config=examples/language_modeling/configs/default.py --config.optimizer=rsgd-sign \\
    --workdir=/tmp/awd_lstm/rsgd-sign

Expected (the paper's Table 2, validation / test perplexity): SGD + ASGD 61.41 / 58.89,
(RSGD + RASGD)-sign 60.21 / 57.85, -topk (1%) 61.01 / 58.64, -scale (alpha = 1/4) 60.39 / 58.26.
It needs a GPU and days; it has not been run here (see the README).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data: "treebank" reads the installed treebank package; a directory path reads ptb.*.txt there.
  config.data_source = "treebank"
  config.max_train_tokens = 0  # 0: all 929,589 training tokens
  config.max_eval_rows = 0  # 0: the whole validation and test sets

  # Model (AWD-LSTM's defaults for PTB).
  config.embed_dim = 400
  config.hidden = 1150
  config.num_layers = 3
  config.dropout = 0.4
  config.dropouth = 0.25
  config.dropouti = 0.4
  config.dropoute = 0.1
  config.wdrop = 0.5

  # Training.
  config.optimizer = "sgd"  # sgd | rsgd-sign | rsgd-topk | rsgd-scale
  config.learning_rate = 30.0
  config.clip = 0.25
  config.weight_decay = 1.2e-6
  config.ar = 2.0  # AWD-LSTM's --alpha (activation regularization)
  config.tar = 1.0  # AWD-LSTM's --beta (temporal activation regularization)
  config.batch_size = 20
  config.eval_batch_size = 10
  config.test_batch_size = 1
  config.bptt = 70
  config.bptt_bucket = 8  # pad windows to multiples of 8: a few compiled shapes, exact losses
  config.num_epochs = 500
  config.seed = 141

  # NT-ASGD and the residual schemes.
  config.nt_asgd = True
  config.nonmono = 5
  # >= 0: switch averaging on after this epoch at the latest (with nt_asgd=False: exactly then, to
  # compare optimizers at the same switch point); -1: only the NT-ASGD trigger switches.
  config.averaging_start_epoch = -1
  config.rsgd_alpha = 0.25  # the paper's Table 2 uses alpha = 1/4 for -scale
  config.topk_fraction = 0.01
  return config
