"""The data fingerprint: of the contents (values, dtypes, shapes), never of where they lie."""

import dataclasses
import hashlib

import numpy as np
import pytest

from examples.common import datalock


@dataclasses.dataclass(frozen=True)
class _Data:
  images: np.ndarray
  labels: np.ndarray
  names: tuple[str, ...]


def _data(seed=0, **changes):
  rng = np.random.default_rng(seed)
  data = _Data(rng.integers(0, 255, (6, 4, 4, 1), np.uint8), np.arange(6) % 3, ("a", "b"))
  return dataclasses.replace(data, **changes)


def test_equal_contents_give_equal_fingerprints_and_count_what_they_cover():
  first, copy = datalock.fingerprint(_data()), datalock.fingerprint(_data())
  assert first == copy
  data = _data()
  assert first["arrays"] == 2
  assert first["bytes"] == data.images.nbytes + data.labels.nbytes + len("a") + len("b")
  assert first["sha256"] == datalock.fingerprint(dataclasses.replace(data))["sha256"]


@pytest.mark.parametrize(
  "change",
  [
    "one pixel",
    "one label",
    "dtype",
    "shape",
    "a name",
    "another data set",
  ],
)
def test_any_change_of_the_contents_changes_the_fingerprint(change):
  data = _data()
  images, labels = data.images.copy(), data.labels.copy()
  if change == "one pixel":
    images[3, 1, 2, 0] ^= 1
    other = dataclasses.replace(data, images=images)
  elif change == "one label":
    labels[0] = 2
    other = dataclasses.replace(data, labels=labels)
  elif change == "dtype":
    other = dataclasses.replace(data, labels=labels.astype(np.int32))
  elif change == "shape":
    other = dataclasses.replace(data, images=images.reshape(6, 16, 1, 1))
  elif change == "a name":
    other = dataclasses.replace(data, names=("a", "c"))
  else:
    other = _data(seed=1)
  assert datalock.fingerprint(other)["sha256"] != datalock.fingerprint(data)["sha256"]


def test_an_array_is_hashed_with_its_dtype_shape_and_bytes():
  array = np.arange(5, dtype=np.int32)
  expected = hashlib.sha256()
  expected.update(b"array <i4 (5,)")
  expected.update(array.tobytes())
  assert datalock.fingerprint(array)["sha256"] == expected.hexdigest()
  # A non-contiguous view is hashed by its values.
  strided = np.arange(10, dtype=np.int32)[::2]
  assert datalock.fingerprint(strided) == datalock.fingerprint(np.array([0, 2, 4, 6, 8], np.int32))
