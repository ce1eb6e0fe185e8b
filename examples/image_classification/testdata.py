"""Writers of tiny data files in the real on-disk formats, for the tests."""

import gzip
import os
import pickle

import numpy as np


def write_idx(path: str, array: np.ndarray) -> None:
  """Writes ``array`` (uint8) as an IDX file, gzipped if ``path`` ends in ``.gz``."""
  header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
  data = header + np.ascontiguousarray(array, np.uint8).tobytes()
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(data)


def class_images(rng: np.random.Generator, labels: np.ndarray, shape, classes: int) -> np.ndarray:
  """Noisy images whose brightness pattern depends on the label, so a model can learn them."""
  base = rng.integers(0, 256, size=(classes, *shape))
  noise = rng.integers(-40, 41, size=(len(labels), *shape))
  return np.clip(base[labels] + noise, 0, 255).astype(np.uint8)


def write_fashion_mnist(directory: str, *, train: int, test: int, size: int = 8, seed: int = 0):
  """The four Fashion-MNIST IDX files (gzipped), ``size`` x ``size`` images, 10 classes."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  for prefix, count in (("train", train), ("t10k", test)):
    labels = rng.integers(0, 10, size=count).astype(np.uint8)
    images = class_images(rng, labels, (size, size), 10)
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels)


def cifar_arrays(rng: np.random.Generator, count: int):
  """CIFAR-100-like records: fine labels, coarse labels and N x 3072 channel-major pixels."""
  fine = rng.integers(0, 100, size=count).astype(np.uint8)
  images = class_images(rng, fine % 10, (32, 32, 3), 10)
  flat = images.transpose(0, 3, 1, 2).reshape(count, 3072)
  return fine, (fine // 5).astype(np.uint8), flat, images


def write_cifar100_binary(directory: str, *, train: int, test: int, seed: int = 0):
  """``train.bin``/``test.bin`` of the CIFAR-100 binary version; returns the HWC images."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  out = {}
  for split, count in (("train", train), ("test", test)):
    fine, coarse, flat, images = cifar_arrays(rng, count)
    records = np.concatenate([coarse[:, None], fine[:, None], flat], axis=1)
    records.astype(np.uint8).tofile(os.path.join(directory, f"{split}.bin"))
    out[split] = (images, fine)
  return out


def write_cifar100_python(directory: str, *, train: int, test: int, seed: int = 0):
  """``train``/``test`` pickles of the CIFAR-100 python version; returns the HWC images."""
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  out = {}
  for split, count in (("train", train), ("test", test)):
    fine, coarse, flat, images = cifar_arrays(rng, count)
    entry = {
      b"filenames": [f"img{i}.png".encode() for i in range(count)],
      b"batch_label": f"{split} batch".encode(),
      b"fine_labels": fine.astype(int).tolist(),
      b"coarse_labels": coarse.astype(int).tolist(),
      b"data": flat,
    }
    with open(os.path.join(directory, split), "wb") as f:
      pickle.dump(entry, f, protocol=2)
    out[split] = (images, fine)
  return out


def write_image_folders(directory: str, *, per_class: int, classes: int = 2, seed: int = 0):
  """ImageNet-style ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` with small JPEGs."""
  from PIL import Image

  rng = np.random.default_rng(seed)
  for split in ("train", "val"):
    for c in range(classes):
      folder = os.path.join(directory, split, f"n{c:08d}")
      os.makedirs(folder, exist_ok=True)
      for i in range(per_class):
        h, w = rng.integers(20, 40, size=2)
        pixels = class_images(rng, np.array([c]), (int(h), int(w), 3), classes)[0]
        Image.fromarray(pixels).save(os.path.join(folder, f"img_{i}.JPEG"), quality=90)
