"""Compressed data parallelism on all of Fashion-MNIST, with the anchors' recipe: 8 devices.

The setting gives error feedback time to pay back: all 60,000 training images, 32 examples a device
and step (batch 256 on 8 CPU devices), 9 epochs (2,106 steps), the learning rate of the exact mean
(0.1, x0.1 after epochs 3 and 6), momentum 0.9, weight decay 5e-4, the small CNN with batch norm
of the Table-1 setting. Seven exchanges, each SGDm with an RSGDm-scale view (views cost no extra
training):

* the exact mean (``none``), 3 seeds;
* scaled sign and top-1%, both with error feedback, through the two-phase exchange with the recipe
  (``*_recipe``), 3 seeds: leaves under 1,000 entries averaged exactly (the biases, the batch-norm
  scales and offsets, the first convolution's 72-entry kernel and the output layer's 640-entry
  kernel: 834 of the 52,162 parameters), and for sign one scale per block of 256 entries. The
  exact warm-up (``compression_exact_steps``) is not part of it: here it only postpones the sign
  collapse to the first compressed step after it (docs/compressed.md);
* one seed each: both schemes through the two-phase exchange without the recipe, and through the
  all-gather exchange with it.

13 trainings; about 30 minutes on 2 CPU cores. Run::

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m \\
    examples.image_classification.compressed_sweep \\
    --config=examples/image_classification/configs/fashion_mnist_compressed_recipe.py \\
    --workdir=runs/compressed_recipe

On 8 virtual CPU devices a step can hang in a collective (docs/design_notes.md, "Collectives that
wait on each other"); XLA then aborts the process after 40 s. Every training resumes from its last
epoch's checkpoint, so running the command again goes on where it stopped, to the same records.

Writes ``runs/compressed_recipe/report/table.md`` and ``curves.png``; the measured table is in the
example's README and in ``docs/compressed.md``.
"""

import ml_collections

from examples.image_classification.configs import fashion_mnist_compressed

EXACT_BELOW = 1_000  # entries: the 1-D leaves, the first convolution's and the output's kernels
BLOCK_SIZE = 256  # entries a sign scale covers


def _variant(label: str, seeds: tuple[int, ...] = (), **overrides) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"label": label, "seeds": seeds, "overrides": overrides})


def get_config():
  config = fashion_mnist_compressed.get_config()
  config.train_subset = 0  # the whole 60k training set
  config.test_subset = 0  # the whole 10k test set
  config.train_eval_examples = 2_000
  config.batch_size = 256  # 32 examples a device and step
  config.num_epochs = 9
  config.lr_decay_epochs = (3, 6)
  config.log_every_steps = 50
  recipe = {"compression_exact_below": EXACT_BELOW}
  sign, topk = {"grad_compression": "sign"}, {"grad_compression": "topk@0.01"}
  two_phase = {"compression_exchange": "two_phase"}
  blocks = {"compression_block_size": BLOCK_SIZE}
  config.sweep.grad_compressions = (
    "none",
    "sign_recipe",
    "topk_recipe",
    "sign_two_phase",
    "topk_two_phase",
    "sign_all_gather_recipe",
    "topk_all_gather_recipe",
  )
  config.sweep.variants = ml_collections.ConfigDict(
    {
      "sign_recipe": _variant(
        "sign + EF, two-phase, recipe", **sign, **two_phase, **recipe, **blocks
      ),
      "topk_recipe": _variant("top-1% + EF, two-phase, recipe", **topk, **two_phase, **recipe),
      "sign_two_phase": _variant("sign + EF, two-phase", (0,), **sign, **two_phase),
      "topk_two_phase": _variant("top-1% + EF, two-phase", (0,), **topk, **two_phase),
      "sign_all_gather_recipe": _variant(
        "sign + EF, all-gather, recipe", (0,), **sign, **recipe, **blocks
      ),
      "topk_all_gather_recipe": _variant("top-1% + EF, all-gather, recipe", (0,), **topk, **recipe),
    }
  )
  config.sweep.accuracy_axis_from = 84  # the collapsed run (10%) stays off the accuracy axes
  config.sweep.title = (
    "Fashion-MNIST (60k), small CNN, 8 devices: compressed exchange with the recipe"
  )
  return config
