"""Fields every image-classification config has (the paper's CIFAR-100 settings as defaults).

Not a run of its own: the experiment configs start from :func:`get_config` and change what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Data.
  config.dataset = "cifar100"  # cifar100 | imagenet | fashion_mnist | mnist5k
  config.data_dir = ""
  config.train_subset = 0  # training examples to use, 0: all (in-memory data sets only)
  config.test_subset = 0
  config.train_eval_examples = 10_000  # fixed training subset for train loss/accuracy each epoch
  config.crop_padding = 0  # Fashion-MNIST/MNIST augmentation (CIFAR always pads 4 and flips)
  config.flip = False
  config.image_size = 224  # ImageNet crop
  config.resize_size = 256  # ImageNet evaluation resize
  config.num_workers = 8  # ImageNet decoding processes (Grain)
  # Model.
  config.model = "densenet121"  # densenet121 | googlenet | resnet18 | resnet50 | small_cnn
  config.model_kwargs = ml_collections.ConfigDict()
  # Optimizer (paper, section 7.1).
  config.optimizer = "rsgdm-scale"
  config.learning_rate = 0.1
  config.momentum = 0.9
  config.weight_decay = 5e-4  # added to the gradient, as PyTorch's SGD does
  config.alpha = 1 / 16  # scaling scheme
  config.topk_fraction = 0.01  # top-k scheme
  config.lr_decay_epochs = (100, 200)
  config.lr_decay_factor = 0.1
  # Training.
  config.num_epochs = 300
  config.batch_size = 128
  config.seed = 0
  config.num_devices = 0  # 0: every device
  config.platform = ""  # "": the default backend; or "cpu", "gpu", "tpu"
  config.sharding = "replicated"  # or "fsdp": params and optimizer state split along "data"
  # Several processes (examples/common/distributed.py): with the three below left empty, JAX detects
  # the cluster (SLURM, Open MPI, TPU); set all three on plain machines.
  config.distributed = False
  config.coordinator_address = ""  # host:port of process 0
  config.num_processes = 0
  config.process_id = -1
  config.distributed_timeout_s = 300  # start-up only: how long to wait for every process to join
  # A stalled collective (a dead or stuck peer) ends the run after this long without progress, with
  # a message to relaunch every process (examples/common/watchdog.py); 0: wait forever.
  config.collective_timeout_s = 600
  config.recompute_bn_stats = False  # re-estimate BN statistics at eval_params (see train.py)
  config.bn_recompute_batches = 50
  config.log_every_steps = 50
  config.progress_bar = True
  return config
