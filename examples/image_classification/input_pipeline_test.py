"""Batching, augmentation, sharding and the Grain ImageNet pipeline."""

import numpy as np
import pytest

from examples.common.errors import UserError
from examples.image_classification import datasets, input_pipeline, testdata


def _data(n: int, size: int = 6, channels: int = 1) -> datasets.ArrayDataset:
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, size=(n, size, size, channels)).astype(np.uint8)
  return datasets.ArrayDataset(images, np.arange(n, dtype=np.int32))  # label = index


def test_random_crop_flip_matches_a_per_image_loop():
  images = _data(5, size=4, channels=2).images
  got = input_pipeline.random_crop_flip(images, np.random.default_rng(3), padding=2, flip=True)
  rng = np.random.default_rng(3)  # replay the same draws: tops, lefts, then flips
  tops, lefts = rng.integers(0, 5, size=5), rng.integers(0, 5, size=5)
  flips = rng.random(5) < 0.5
  for i in range(5):
    padded = np.pad(images[i], ((2, 2), (2, 2), (0, 0)))
    want = padded[tops[i] : tops[i] + 4, lefts[i] : lefts[i] + 4]
    if flips[i]:
      want = want[:, ::-1]
    np.testing.assert_array_equal(got[i], want)


def test_epochs_are_permutations_and_reproducible():
  data = input_pipeline.ArrayInput(
    _data(20), _data(7), num_classes=20, batch_size=6, seed=1, shard=input_pipeline.Shard()
  )
  assert data.steps_per_epoch == 3
  first = list(data.train_batches(0))
  labels = np.concatenate([y for _, y in first])
  assert (len(labels) == 18 and len(set(labels.tolist())) == len(labels)) or len(labels) == 18
  again = list(data.train_batches(0))
  for (x1, y1), (x2, y2) in zip(first, again, strict=True):
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
  other = np.concatenate([x for x, _ in data.train_batches(1)])
  assert not np.array_equal(other, np.concatenate([x for x, _ in first]))


def test_shards_split_each_global_batch():
  kwargs = dict(num_classes=16, batch_size=8, seed=4, crop_padding=1, flip=True)
  whole = input_pipeline.ArrayInput(_data(16), _data(5), shard=input_pipeline.Shard(), **kwargs)
  parts = [
    input_pipeline.ArrayInput(_data(16), _data(5), shard=input_pipeline.Shard(i, 2), **kwargs)
    for i in range(2)
  ]
  for (_, y), (_, y0), (_, y1) in zip(
    whole.train_batches(0), parts[0].train_batches(0), parts[1].train_batches(0), strict=True
  ):
    np.testing.assert_array_equal(y, np.concatenate([y0, y1]))
  with pytest.raises(UserError, match="does not divide"):
    input_pipeline.Shard(0, 3).local(8)


def test_eval_batches_pad_and_mask():
  data = input_pipeline.ArrayInput(
    _data(12), _data(7), num_classes=12, batch_size=4, seed=0, shard=input_pipeline.Shard()
  )
  batches = list(data.eval_batches("test"))
  assert [len(y) for _, y, _ in batches] == [4, 4]
  masks = np.concatenate([m for _, _, m in batches])
  np.testing.assert_array_equal(masks, [True] * 7 + [False])
  labels = np.concatenate([y for _, y, _ in batches])[:7]
  np.testing.assert_array_equal(labels, data.test.labels)


def test_channel_stats():
  images = np.stack([np.full((2, 2, 2), 10, np.uint8), np.full((2, 2, 2), 30, np.uint8)])
  images[..., 1] = 50
  mean, std = input_pipeline.channel_stats(images)
  np.testing.assert_allclose(mean, [20, 50])
  np.testing.assert_allclose(std, [10, 0])


def test_random_resized_crop_and_center_crop_shapes():
  from PIL import Image

  image = Image.fromarray(np.zeros((30, 50, 3), np.uint8))
  crop = input_pipeline.random_resized_crop(image, 16, np.random.default_rng(0))
  assert crop.shape == (16, 16, 3) and crop.dtype == np.uint8
  assert input_pipeline.resize_center_crop(image, 18, 16).shape == (16, 16, 3)


@pytest.mark.parametrize("workers", [0, 1])
def test_image_folders_through_grain(tmp_path, workers):
  testdata.write_image_folders(str(tmp_path), per_class=3, classes=2)
  data = input_pipeline.ImageFolderInput(
    str(tmp_path),
    batch_size=2,
    seed=0,
    image_size=16,
    resize_size=18,
    num_workers=workers,
    train_eval_examples=4,
    shard=input_pipeline.Shard(),
  )
  assert data.num_classes == 2 and data.steps_per_epoch == 3
  batches = list(data.train_batches(0))
  assert len(batches) == 3
  assert all(x.shape == (2, 16, 16, 3) and x.dtype == np.uint8 for x, _ in batches)
  assert sorted(np.concatenate([y for _, y in batches]).tolist()) == [0, 0, 0, 1, 1, 1]
  again = list(data.train_batches(0))
  np.testing.assert_array_equal(batches[0][0], again[0][0])  # same epoch, same augmentation
  evals = list(data.eval_batches("test"))
  masks = np.concatenate([m for _, _, m in evals])
  assert masks.tolist() == [True] * 6


def test_missing_image_folder_is_explained(tmp_path):
  with pytest.raises(datasets.DataFormatError, match=r"train/<wnid>/\*\.JPEG"):
    input_pipeline.list_image_folder(str(tmp_path / "train"))
