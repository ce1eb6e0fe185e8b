"""A GPT-2-style transformer on Penn Treebank words, sized for one accelerator.

6 layers of width 384 (6 heads), context 256, rotary positions, dropout 0.2: about 11M parameters
(3.8M of them the tied 10,000-word embedding). AdamW (peak learning rate 1e-3, b2 0.95, decoupled
weight decay 0.1 on the matrices), gradient clipping at norm 1, linear warm-up over 100 steps then
cosine decay to a tenth; 64 windows a step (16,384 tokens), 56 steps an epoch of the 929,589
training tokens, 20 epochs (1,120 steps), evaluated 4 times an epoch.

One training evaluates AdamW and its residual views: the scaling scheme at three alphas (an
exponential average of the AdamW iterates with decay 1 - alpha), scaled sign and top-1%:

  python -m examples.transformer_lm.main \\
    --config=examples/transformer_lm/configs/default.py --workdir=/tmp/transformer_lm
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data: "treebank" reads the installed treebank package; a directory path reads ptb.*.txt there.
  config.data_source = "treebank"
  config.max_train_tokens = 0  # 0: all 929,589 training tokens
  config.max_eval_tokens = 0  # 0: the whole validation and test streams

  # Model.
  config.context = 256  # tokens a window
  config.layers = 6
  config.width = 384
  config.heads = 6
  config.mlp_ratio = 4
  config.dropout = 0.2  # on embeddings, attention weights and both residual branches
  config.positions = "rotary"  # "rotary" or "learned"

  # Training: AdamW, warm-up then cosine decay, clipping; the views share its trajectory.
  config.optimizer = (
    "adamw,adamw-scale@0.1,adamw-scale@0.01,adamw-scale@0.002,adamw-sign,adamw-topk"
  )
  config.learning_rate = 1e-3  # peak, after the warm-up
  config.warmup_steps = 100
  config.final_lr_ratio = 0.1  # the cosine decay ends at this fraction of the peak
  config.weight_decay = 0.1  # decoupled, on matrices and embeddings
  config.clip_norm = 1.0  # global gradient norm
  config.alpha = 1 / 16  # *-scale without an @ value
  config.topk_fraction = 0.01  # *-topk without an @ value
  config.batch_size = 64  # windows a step
  config.eval_batch_size = 64
  config.num_epochs = 20
  config.evals_per_epoch = 4  # most of the interest is early: evaluate every quarter epoch
  config.seed = 0

  # Devices: data parallelism over config.num_devices (0: all), parameters replicated or FSDP.
  config.num_devices = 0
  config.sharding = "replicated"  # "replicated" or "fsdp"
  config.platform = ""  # "" : JAX's default backend
  config.log_every_steps = 50  # steps between loss checks (non-finite stop, progress bar)
  config.progress_bar = False
  return config
