"""Fields every image-classification config has (the paper's CIFAR-100 settings as defaults).

Not a run of its own: the experiment configs start from :func:`get_config` and change what differs.
"""

import ml_collections

from examples.common import watchdog


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "cifar100"  # cifar100 | imagenet | fashion_mnist | mnist5k
  config.data_dir = ""  # folder of the data set files (may change on resume)
  config.train_subset = 0  # training examples to use, 0: all (in-memory data sets only)
  config.test_subset = 0  # test examples to use, 0: all
  config.train_eval_examples = 10_000  # fixed training subset for train loss/accuracy each epoch
  config.crop_padding = 0  # Fashion-MNIST/MNIST augmentation (CIFAR always pads 4 and flips)
  config.flip = False  # random horizontal flips (Fashion-MNIST/MNIST)
  config.image_size = 224  # ImageNet crop
  config.resize_size = 256  # ImageNet evaluation resize
  config.num_workers = 8  # ImageNet decoding processes (Grain)
  # Model.
  config.model = "densenet121"  # densenet121 | googlenet | resnet18 | resnet50 | small_cnn
  config.model_kwargs = ml_collections.ConfigDict()  # the model's own arguments (width, ...)
  # Optimizer (paper, section 7.1).
  config.optimizer = "rsgdm-scale"  # a name, or views: sgdm,rsgdm-scale@0.25,... (see README)
  config.learning_rate = 0.1  # initial learning rate (> 0)
  config.momentum = 0.9  # heavy-ball momentum of the *m optimizers, in [0, 1)
  config.weight_decay = 5e-4  # added to the gradient, as PyTorch's SGD does
  config.alpha = 1 / 16  # scaling scheme
  config.topk_fraction = 0.01  # top-k scheme
  config.lr_decay_epochs = (100, 200)  # epochs at whose start the learning rate decays
  config.lr_decay_factor = 0.1  # learning rate multiplier at each decay epoch (> 0)
  # Training.
  config.num_epochs = 300  # epochs to train (may grow on resume)
  config.batch_size = 128  # global batch, split over devices and processes
  config.seed = 0  # model initialization, data order and augmentation
  config.num_devices = 0  # 0: every device
  config.platform = ""  # "": the default backend; or "cpu", "gpu", "tpu"
  config.sharding = "replicated"  # or "fsdp": params and optimizer state split along "data"
  # Compressed gradient exchange with error feedback (replicated sharding only; see README).
  config.grad_compression = "none"  # none | sign | sign-noef | topk@0.01 | topk-noef@0.01
  config.compression_axis = "data"  # mesh axis the gradients are exchanged across, compressed
  config.compression_exchange = "all_gather"  # or two_phase (bytes a device do not grow with P)
  # The anchors' recipe, each off at 0: leaves with fewer entries averaged exactly (biases, batch
  # norm), the first steps exchanged exactly, and sign's scale per block of entries, not per leaf.
  config.compression_exact_below = 0  # leaves with fewer entries than this are averaged exactly
  config.compression_exact_steps = 0  # the first this many steps exchange the exact mean
  config.compression_block_size = 0  # sign: one scale per block of this many entries (0: a leaf)
  # Several processes (examples/common/distributed.py): with the three below left empty, JAX detects
  # the cluster (SLURM, Open MPI, TPU); set all three on plain machines.
  config.distributed = False  # start several processes (jax.distributed)
  config.coordinator_address = ""  # host:port of process 0
  config.num_processes = 0  # how many processes (with distributed)
  config.process_id = -1  # this process's index in [0, num_processes)
  config.distributed_timeout_s = 300  # seconds to wait for the other processes at start-up
  # A stalled collective (a dead or stuck peer) ends a multi-process run after this long without
  # progress, with a message to relaunch every process (examples/common/watchdog.py): 90 s, so that
  # the survivors of a dead peer end within two minutes. Compilation does not count against it.
  config.collective_timeout_s = watchdog.DEFAULT_TIMEOUT_S  # seconds without progress (0: never)
  config.recompute_bn_stats = False  # re-estimate BN statistics at eval_params (see train.py)
  config.bn_recompute_batches = 50  # training batches used by recompute_bn_stats
  config.log_every_steps = 50  # steps between loss checks (non-finite stop, progress bar)
  config.progress_bar = True  # show a tqdm bar per epoch
  return config
