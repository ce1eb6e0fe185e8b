"""Batches for training and evaluation, as uint8 NHWC images and int32 labels.

Two kinds of input, one interface (:class:`Input`):

* :class:`ArrayInput` for data sets that fit in memory (CIFAR-100, Fashion-MNIST, MNIST 5k). Batches
  are cut from a per-epoch permutation and augmented with vectorised NumPy on the host; both draw
  from ``numpy.random.default_rng([seed, epoch])``, so epoch ``e`` is the same batches whether the
  run started at epoch 0 or resumed at ``e`` (which makes resumed runs match uninterrupted ones).
* :class:`ImageFolderInput` for ImageNet's ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``
  folders: a Grain pipeline that decodes and augments JPEGs in parallel worker processes.

Standardisation (per-channel mean and std) happens on the device inside the jitted step, so the
host moves uint8 bytes. Each process gets its slice of every global batch (multi-host runs);
evaluation batches are padded to a whole batch and carry a mask of real examples.
"""

import abc
import dataclasses
import os
from collections.abc import Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags as absl_flags

from examples.common import config_checks
from examples.common.errors import UserError
from examples.image_classification import datasets

Batch = tuple[np.ndarray, np.ndarray]  # images, labels
EvalBatch = tuple[np.ndarray, np.ndarray, np.ndarray]  # images, labels, mask


@dataclasses.dataclass(frozen=True)
class Shard:
  """Which part of each global batch this process feeds."""

  index: int = 0
  count: int = 1

  @classmethod
  def current(cls) -> "Shard":
    return cls(jax.process_index(), jax.process_count())

  def local(self, global_batch: int) -> slice:
    if global_batch % self.count:
      raise UserError(
        f"config.batch_size={global_batch} does not divide over {self.count} processes; make it a "
        "multiple of the process count."
      )
    size = global_batch // self.count
    return slice(self.index * size, (self.index + 1) * size)


class Input(abc.ABC):
  """Training and evaluation batches of one data set."""

  num_classes: int
  image_shape: tuple[int, int, int]
  mean: np.ndarray  # per-channel, in 0..255 pixel units
  std: np.ndarray
  steps_per_epoch: int

  @abc.abstractmethod
  def train_batches(self, epoch: int) -> Iterator[Batch]:
    """The ``steps_per_epoch`` augmented batches of epoch ``epoch`` (this process's part)."""

  @abc.abstractmethod
  def eval_batches(self, split: str) -> Iterator[EvalBatch]:
    """Unaugmented batches of ``split`` ("test" or "train_eval"), padded, with a mask."""

  @abc.abstractmethod
  def contents(self) -> Any:
    """What identifies the data wherever it lies (for :mod:`examples.common.datalock`)."""


# --------------------------------------------------------------------------------------------------
# Augmentation on uint8 batches


def random_crop_flip(
  images: np.ndarray, rng: np.random.Generator, *, padding: int, flip: bool
) -> np.ndarray:
  """Random crop after zero-padding by ``padding`` pixels, then random horizontal flip."""
  n, h, w, _ = images.shape
  if padding:
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    top = rng.integers(0, 2 * padding + 1, size=n)
    left = rng.integers(0, 2 * padding + 1, size=n)
    rows = (top[:, None] + np.arange(h))[:, :, None]
    cols = (left[:, None] + np.arange(w))[:, None, :]
    images = padded[np.arange(n)[:, None, None], rows, cols]
  if flip:
    flipped = rng.random(n) < 0.5
    images = np.where(flipped[:, None, None, None], images[:, :, ::-1], images)
  return images


def channel_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of uint8 images (for standardisation)."""
  pixels = images.reshape(-1, images.shape[-1]).astype(np.float64)
  return pixels.mean(axis=0).astype(np.float32), pixels.std(axis=0).astype(np.float32)


def standardize(images: jax.Array, mean: np.ndarray, std: np.ndarray) -> jax.Array:
  """uint8 images as float32, standardized per channel (on the device, inside a jitted step)."""
  return (images.astype(jnp.float32) - mean) / std


def _padded_batches(
  data: datasets.ArrayDataset, batch_size: int, shard: Shard
) -> Iterator[EvalBatch]:
  local = shard.local(batch_size)
  for start in range(0, len(data), batch_size):
    idx = np.arange(start, start + batch_size)
    mask = idx < len(data)
    idx = np.where(mask, idx, 0)[local]
    yield data.images[idx], data.labels[idx], mask[local]


# --------------------------------------------------------------------------------------------------
# In-memory data sets


class ArrayInput(Input):
  """Batches from data held in memory.

  Args:
    train, test: the two splits.
    num_classes: number of labels.
    batch_size: global batch size (all processes together); the last partial training batch of an
      epoch is dropped.
    seed: seeds the per-epoch permutation and augmentation.
    crop_padding: random-crop padding in pixels (0: no cropping).
    flip: random horizontal flips.
    train_eval_examples: size of the fixed training subset evaluated each epoch (train loss and
      accuracy at the evaluated parameters), 0 for all of it.
    shard: this process's part of each batch.
  """

  def __init__(
    self,
    train: datasets.ArrayDataset,
    test: datasets.ArrayDataset,
    *,
    num_classes: int,
    batch_size: int,
    seed: int,
    crop_padding: int = 0,
    flip: bool = False,
    train_eval_examples: int = 0,
    shard: Shard | None = None,
  ):
    config_checks.check_batch_size(batch_size, len(train))
    self.train, self.test = train, test
    self.num_classes = num_classes
    self.image_shape = train.images.shape[1:]
    self.mean, self.std = channel_stats(train.images)
    self.batch_size = batch_size
    self.seed = seed
    self.crop_padding, self.flip = crop_padding, flip
    self.steps_per_epoch = len(train) // batch_size
    self.shard = shard or Shard.current()
    self._local = self.shard.local(batch_size)
    n_eval = len(train) if not train_eval_examples else min(train_eval_examples, len(train))
    chosen = np.sort(np.random.default_rng([seed, 2**31 - 1]).permutation(len(train))[:n_eval])
    self.train_eval = train.take(chosen)

  def train_batches(self, epoch: int) -> Iterator[Batch]:
    rng = np.random.default_rng([self.seed, epoch])
    order = rng.permutation(len(self.train))
    for step in range(self.steps_per_epoch):
      idx = order[step * self.batch_size : (step + 1) * self.batch_size][self._local]
      images = self.train.images[idx]
      if self.crop_padding or self.flip:
        images = random_crop_flip(images, rng, padding=self.crop_padding, flip=self.flip)
      yield images, self.train.labels[idx]

  def eval_batches(self, split: str) -> Iterator[EvalBatch]:
    data = {"test": self.test, "train_eval": self.train_eval}[split]
    return _padded_batches(data, self.batch_size, self.shard)

  def contents(self) -> Any:
    """The training and test images and labels."""
    return {"train": self.train, "test": self.test}


def subset(data: datasets.ArrayDataset, size: int, seed: int = 0) -> datasets.ArrayDataset:
  """A fixed random subset of ``size`` examples (``size`` 0 or >= len: all of them)."""
  if not size or size >= len(data):
    return data
  return data.take(np.sort(np.random.default_rng(seed).permutation(len(data))[:size]))


# --------------------------------------------------------------------------------------------------
# ImageNet folders through Grain

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32) * 255
_IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png")


def list_image_folder(root: str, classes: list[str] | None = None) -> tuple[list, list[str]]:
  """``(path, label)`` pairs of ``root/<class>/<image>``, classes sorted by name."""
  if not os.path.isdir(root):
    raise datasets.DataFormatError(
      f"No image folder {root!r}: expected ImageNet's train/<wnid>/*.JPEG and val/<wnid>/*.JPEG "
      "layout (val sorted into class folders)."
    )
  classes = classes or sorted(e.name for e in os.scandir(root) if e.is_dir())
  if not classes:
    raise datasets.DataFormatError(f"{root!r} has no class sub-folders.")
  items = []
  for label, name in enumerate(classes):
    folder = os.path.join(root, name)
    if not os.path.isdir(folder):
      continue
    for file in sorted(os.listdir(folder)):
      if file.lower().endswith(_IMAGE_EXTENSIONS):
        items.append((os.path.join(folder, file), label))
  if not items:
    raise datasets.DataFormatError(f"{root!r} holds no .JPEG/.jpg/.png images.")
  return items, classes


def _decode(path: str):
  from PIL import Image

  try:
    with Image.open(path) as image:
      return image.convert("RGB")
  except OSError as e:
    raise datasets.DataFormatError(f"{path}: cannot be decoded as an image ({e}).") from e


def random_resized_crop(
  image, size: int, rng: np.random.Generator, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
  """torchvision's ``RandomResizedCrop``: a random area/aspect crop resized to ``size``."""
  from PIL import Image

  width, height = image.size
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w = round(np.sqrt(target * aspect))
    h = round(np.sqrt(target / aspect))
    if 0 < w <= width and 0 < h <= height:
      left = int(rng.integers(0, width - w + 1))
      top = int(rng.integers(0, height - h + 1))
      break
  else:  # fall back to the central crop with the nearest allowed aspect ratio
    aspect = width / height
    if aspect < ratio[0]:
      w, h = width, round(width / ratio[0])
    elif aspect > ratio[1]:
      w, h = round(height * ratio[1]), height
    else:
      w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
  crop = image.resize((size, size), Image.BILINEAR, box=(left, top, left + w, top + h))
  return np.asarray(crop, dtype=np.uint8)


def resize_center_crop(image, resize: int, size: int) -> np.ndarray:
  """Resizes the shorter side to ``resize``, then takes the central ``size`` x ``size`` crop."""
  from PIL import Image

  width, height = image.size
  factor = resize / min(width, height)
  w, h = max(size, round(width * factor)), max(size, round(height * factor))
  image = image.resize((w, h), Image.BILINEAR)
  left, top = (w - size) // 2, (h - size) // 2
  return np.asarray(image.crop((left, top, left + size, top + size)), dtype=np.uint8)


class _TrainTransform(grain.transforms.RandomMap):
  def __init__(self, size: int):
    self.size = size

  def random_map(self, element, rng: np.random.Generator):
    path, label = element
    image = random_resized_crop(_decode(path), self.size, rng)
    if rng.random() < 0.5:
      image = image[:, ::-1]
    return np.ascontiguousarray(image), np.int32(label)


class _EvalTransform(grain.transforms.Map):
  def __init__(self, resize: int, size: int):
    self.resize, self.size = resize, size

  def map(self, element):
    path, label, real = element
    return resize_center_crop(_decode(path), self.resize, self.size), np.int32(label), real


def _stack(elements):
  return tuple(np.stack(parts) for parts in zip(*elements, strict=True))


class ImageFolderInput(Input):
  """ImageNet-style folders decoded by Grain worker processes.

  Training: shuffle, random-resized crop to ``image_size`` and horizontal flip; evaluation: resize
  the shorter side to ``resize_size``, center crop ``image_size``. ``num_workers`` processes decode
  in parallel (0 decodes in the main process; tests use that).
  """

  def __init__(
    self,
    data_dir: str,
    *,
    batch_size: int,
    seed: int,
    image_size: int = 224,
    resize_size: int = 256,
    num_workers: int = 8,
    train_eval_examples: int = 10_000,
    shard: Shard | None = None,
  ):
    self.data_dir = data_dir
    self.train_items, classes = list_image_folder(os.path.join(data_dir, "train"))
    self.test_items, _ = list_image_folder(os.path.join(data_dir, "val"), classes)
    self.num_classes = len(classes)
    self.image_shape = (image_size, image_size, 3)
    self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD
    self.batch_size, self.seed = batch_size, seed
    self.image_size, self.resize_size = image_size, resize_size
    self.num_workers = num_workers
    self.shard = shard or Shard.current()
    self._local_size = len(range(*self.shard.local(batch_size).indices(batch_size)))
    config_checks.check_batch_size(batch_size, len(self.train_items))
    self.steps_per_epoch = len(self.train_items) // batch_size
    chosen = np.random.default_rng([seed, 2**31 - 1]).permutation(len(self.train_items))
    self.train_eval_items = [self.train_items[i] for i in sorted(chosen[:train_eval_examples])]

  def _iterate(self, dataset: grain.MapDataset) -> Iterator:
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=64))
    if self.num_workers:
      # Grain's workers read its settings from absl flags; outside an absl app (a notebook, a
      # test) they are unparsed, so take their defaults instead of failing.
      if not absl_flags.FLAGS.is_parsed():
        absl_flags.FLAGS.mark_as_parsed()
      iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.num_workers))
    return iter(iterable)

  def train_batches(self, epoch: int) -> Iterator[Batch]:
    n = self.steps_per_epoch * self.batch_size
    order = np.random.default_rng([self.seed, epoch]).permutation(len(self.train_items))[:n]
    # Process p takes rows p*b..(p+1)*b-1 of every global batch of size B = count * b.
    local = self.shard.local(self.batch_size)
    order = order.reshape(self.steps_per_epoch, self.batch_size)[:, local].reshape(-1)
    items = [self.train_items[i] for i in order]
    dataset = (
      grain.MapDataset.source(items)
      .random_map(_TrainTransform(self.image_size), seed=self.seed * 100_003 + epoch)
      .batch(self._local_size, drop_remainder=True, batch_fn=_stack)
    )
    yield from self._iterate(dataset)

  def contents(self) -> Any:
    """Each image's path below ``data_dir`` and its label, one line each (the files themselves
    are not read: too many)."""
    return {
      split: "\n".join(f"{os.path.relpath(path, self.data_dir)}\t{label}" for path, label in items)
      for split, items in (("train", self.train_items), ("test", self.test_items))
    }

  def eval_batches(self, split: str) -> Iterator[EvalBatch]:
    items = {"test": self.test_items, "train_eval": self.train_eval_items}[split]
    total = -(-len(items) // self.batch_size) * self.batch_size
    padded = [(*items[i], True) if i < len(items) else (*items[0], False) for i in range(total)]
    local = self.shard.local(self.batch_size)
    rows = np.arange(total).reshape(-1, self.batch_size)[:, local].reshape(-1)
    dataset = (
      grain.MapDataset.source([padded[i] for i in rows])
      .map(_EvalTransform(self.resize_size, self.image_size))
      .batch(self._local_size, batch_fn=_stack)
    )
    yield from self._iterate(dataset)


# --------------------------------------------------------------------------------------------------


def create_input(config, shard: Shard | None = None) -> Input:
  """Builds the :class:`Input` named by ``config.dataset``."""
  common = dict(batch_size=config.batch_size, seed=config.seed, shard=shard)
  name = config.dataset
  if name == "cifar100":
    train = datasets.load_cifar100(config.data_dir, "train")
    test = datasets.load_cifar100(config.data_dir, "test")
    num_classes, padding, flip = 100, 4, True
  elif name in ("fashion_mnist", "mnist5k"):
    if name == "fashion_mnist":
      data_dir = config.data_dir or datasets.FASHION_MNIST_DIR
      train = datasets.load_mnist_idx(data_dir, "train")
      test = datasets.load_mnist_idx(data_dir, "test")
    else:
      train, test = datasets.load_mnist5k("train"), datasets.load_mnist5k("test")
    num_classes, padding, flip = 10, config.get("crop_padding", 0), config.get("flip", False)
  elif name == "imagenet":
    return ImageFolderInput(
      config.data_dir,
      image_size=config.image_size,
      resize_size=config.resize_size,
      num_workers=config.num_workers,
      train_eval_examples=config.train_eval_examples,
      **common,
    )
  else:
    raise UserError(f"Unknown dataset {name!r}. Valid: cifar100, imagenet, fashion_mnist, mnist5k.")
  train = subset(train, config.get("train_subset", 0))
  test = subset(test, config.get("test_subset", 0))
  return ArrayInput(
    train,
    test,
    num_classes=num_classes,
    crop_padding=padding,
    flip=flip,
    train_eval_examples=config.train_eval_examples,
    **common,
  )
