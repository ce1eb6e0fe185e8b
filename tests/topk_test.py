"""Exact top-k selection (rsgd_optax._topk) against a stable full sort in NumPy."""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from jax_compat import enable_x64

from rsgd_optax import _topk

reference_keep = reference.keep_top
reference_global = reference.keep_top_global


# One compiled function per (shape, dtype, k): jit caches them across tests.
keep_top_k = jax.jit(_topk.keep_top_k, static_argnums=1)


@functools.cache
def _leaves_fn(ks: tuple[int, ...]):
  return jax.jit(lambda leaves: _topk.keep_top_k_leaves(leaves, ks))


@functools.cache
def _global_fn(k: int):
  return jax.jit(lambda leaves: _topk.keep_top_k_global(leaves, k))


def assert_same(actual: jax.Array, expected: np.ndarray, like: jax.Array) -> None:
  assert actual.shape == like.shape and actual.dtype == like.dtype
  np.testing.assert_array_equal(np.asarray(actual, np.float64), expected)


def _data(kind: str, shape: tuple[int, ...], dtype, seed: int = 0) -> jax.Array:
  rng = np.random.default_rng(seed)
  if kind == "normal":
    values = rng.normal(size=shape)
  elif kind == "ties":  # few distinct magnitudes, both signs: many ties at any threshold
    values = rng.integers(-3, 4, size=shape).astype(np.float64)
  elif kind == "all_equal":
    values = np.full(shape, -1.5)
  elif kind == "zeros":
    values = np.zeros(shape)
  elif kind == "negative":
    values = -np.abs(rng.normal(size=shape)) - 0.1
  else:
    raise ValueError(kind)
  return jnp.asarray(values, dtype)


KINDS = ("normal", "ties", "all_equal", "zeros", "negative")
KS = (1, 7, 100, 299, 300, 1000)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_keep_top_k_matches_stable_sort(dtype):
  # Every data kind with every k, as the leaves of one batched call (one compilation per dtype).
  cases = [(kind, k) for kind in KINDS for k in KS]
  leaves = [_data(kind, (20, 15), dtype, seed) for seed, (kind, _) in enumerate(cases)]
  out = _leaves_fn(tuple(k for _, k in cases))(leaves)
  for actual, x, (_, k) in zip(out, leaves, cases, strict=True):
    assert_same(actual, reference_keep(x, k), x)
    assert int(jnp.sum(actual != 0)) <= min(k, x.size)


def test_single_leaf_entry_point():
  for kind in KINDS:
    x = _data(kind, (20, 15), jnp.float32)
    assert_same(keep_top_k(x, 30), reference_keep(x, 30), x)


def test_exactly_k_survive_on_nonzero_ties():
  x = _data("all_equal", (4097,), jnp.float32)  # more than one tile
  ks = (1, 1024, 1025, 4096)
  for out, k in zip(_leaves_fn(ks)([x] * len(ks)), ks, strict=True):
    assert int(jnp.sum(out != 0)) == k
    assert_same(out, reference_keep(x, k), x)


def test_large_leaf_matches_lax_top_k():
  x = jax.random.normal(jax.random.key(0), (4, 70_001), jnp.float32)  # a selection of its own
  k = 2_100
  _, index = jax.lax.top_k(jnp.abs(x.reshape(-1)), k)
  expected = np.zeros(x.size)
  expected[np.asarray(index)] = np.asarray(x).reshape(-1)[np.asarray(index)]
  assert_same(keep_top_k(x, k), expected.reshape(x.shape), x)


def test_ties_cut_deep_inside_a_large_leaf_and_across_rows():
  # Few distinct magnitudes, so the threshold is tied across hundreds of tiles; each row's cut falls
  # in a different tile, and the small leaves share one layout whose last tiles are padded.
  rng = np.random.default_rng(3)
  large = jnp.asarray(np.round(rng.normal(size=(300_001,)) * 4) / 4, jnp.float32)
  small = [jnp.asarray(rng.integers(-2, 3, size=(n,)), jnp.float32) for n in (1_500, 2_049, 700)]
  leaves = [large, *small]
  ks = (3_001, 600, 1_111, 13)
  for actual, x, k in zip(_leaves_fn(ks)(leaves), leaves, ks, strict=True):
    assert_same(actual, reference_keep(x, k), x)
    assert int(jnp.sum(actual != 0)) == k


def test_ties_cut_in_an_unpadded_leaf_of_several_dimensions():
  # A leaf that fills whole tiles is masked in its own shape, its flat index built from one iota
  # per axis: a cut deep inside it checks that index against a stable sort.
  rng = np.random.default_rng(5)
  x = jnp.asarray(np.round(rng.normal(size=(64, 32, 128)) * 4) / 4, jnp.float32)
  for k in (5_000, 77_777):
    actual = keep_top_k(x, k)
    assert_same(actual, reference_keep(x, k), x)
    assert int(jnp.sum(actual != 0)) == k


def test_several_large_leaves_each_selected_on_its_own():
  # Leaves of 2**18 entries or more get selections of their own, side by side in one program:
  # different scales, and one padded leaf whose threshold is tied deep inside it.
  rng = np.random.default_rng(6)
  leaves = [
    jnp.asarray(rng.normal(size=(1 << 18,)) * scale, jnp.float32) for scale in (1.0, 1e-3, 50.0)
  ]
  leaves.append(jnp.asarray(np.round(rng.normal(size=(512, 520)) * 3), jnp.float32))
  ks = (2_621, 10, 100_000, 40_000)
  for actual, x, k in zip(_leaves_fn(ks)(leaves), leaves, ks, strict=True):
    assert_same(actual, reference_keep(x, k), x)
    assert int(jnp.sum(actual != 0)) == k


def test_large_leaves_of_odd_sizes_are_tiled_beside_viewed_ones():
  # Large leaves whose sizes have no factor of 32 are copied into tiles; rows of tiles and rows of
  # views alternate here, in one call.
  leaves = [
    _data("ties", ((1 << 18) + 1,), jnp.float32, 1),
    _data("normal", (512, 1024), jnp.float32, 2),
    _data("ties", (3, (1 << 17) + 1), jnp.float32, 3),
  ]
  ks = (2_621, 5_242, 39_322)
  for actual, x, k in zip(_leaves_fn(ks)(leaves), leaves, ks, strict=True):
    assert_same(actual, reference_keep(x, k), x)


def test_two_bfloat16_rows_share_16_bit_counter_indices():
  # Two rows of 15-bit digits fill exactly 2**16 counters: the one case where a shared layout's
  # histogram indices (row offset included) are 16-bit.
  leaves = [_data("normal", (1_000,), jnp.bfloat16, 1), _data("ties", (700,), jnp.bfloat16, 2)]
  ks = (33, 250)
  for actual, x, k in zip(_leaves_fn(ks)(leaves), leaves, ks, strict=True):
    assert_same(actual, reference_keep(x, k), x)


@pytest.mark.parametrize("rows", [1, 2])
def test_radix_select_counts_no_padding_among_ties(rows):
  # A threshold of 0 is tied with every zero entry; the zeros padding each row's last tile must not
  # be counted among them, nor be chosen as the last tie kept.
  rng = np.random.default_rng(4)
  arrays = [
    jnp.asarray(np.where(rng.random(300) < 0.1, 1.0, 0.0), jnp.float32) for _ in range(rows)
  ]
  tiles = _topk._tiles(arrays, list(range(rows)), [0] * rows)
  assert tiles.values.size > 300 * rows  # padded
  keys = [_topk._magnitude_keys(tiles.values)]
  nonzero = [int(jnp.sum(a != 0)) for a in arrays]
  need = jnp.asarray([n + 5 for n in nonzero], jnp.int32)
  threshold, need_at_threshold, ties = _topk._radix_select([tiles], keys, need, 31, 12)
  np.testing.assert_array_equal(threshold, 0)
  np.testing.assert_array_equal(need_at_threshold, 5)
  # The last pass's tie count includes the padding; the cut must not.
  zeros = jnp.asarray([300 - n for n in nonzero], jnp.int32)
  padding = tiles.values.shape[1] - 300
  np.testing.assert_array_equal(ties, zeros + padding)
  # The last tie kept is each row's fifth zero, in flat order.
  tied = [(keys[0] == tiles.per_slab(threshold)) & tiles.valid]
  last = _topk._last_kept_tie([tiles], tied, need_at_threshold, ties, _topk._Layout.PACKED)
  fifth_zero = [int(np.flatnonzero(np.asarray(a) == 0)[4]) for a in arrays]
  np.testing.assert_array_equal(last, fifth_zero)
  # With all zeros of a row kept, the last is its last zero, not a padding entry.
  last = _topk._last_kept_tie([tiles], tied, zeros, ties, _topk._Layout.PACKED)
  last_zero = [int(np.flatnonzero(np.asarray(a) == 0)[-1]) for a in arrays]
  np.testing.assert_array_equal(last, last_zero)
  # A row that keeps every tie needs no cut.
  last = _topk._last_kept_tie([tiles], tied, zeros, zeros, _topk._Layout.PACKED)
  np.testing.assert_array_equal(last, np.iinfo(np.int32).max)


def test_worked_example_of_the_derivation():
  # The worked example of the derivation comment in _topk.py, step by step: 6-bit keys counted in
  # two passes of 3-bit (octal) digits, a (2, 4) leaf in its own shape (two slabs of 4), k = 3.
  x = np.array([[13, -42, 7, -5], [-13, 3, 13, 13]], np.float32)
  k, keys = 3, np.abs(x).astype(np.uint32)
  part = _topk._own_part(jnp.asarray(x), 0, 0, _topk._Layout.OWN_SHAPE)
  first_need = jnp.asarray([k], jnp.int32)
  # Pass 1: the top digit of every key.
  hist = np.bincount((keys >> 3).ravel(), minlength=8)
  at_least = np.cumsum(hist[::-1])[::-1]
  np.testing.assert_array_equal(hist, [3, 4, 0, 0, 0, 1, 0, 0])
  np.testing.assert_array_equal(at_least, [8, 5, 1, 1, 1, 1, 0, 0])
  digit = int(np.flatnonzero(at_least >= k).max())
  assert (digit, hist[digit], at_least[digit + 1]) == (1, 4, 1)  # c, ties, above
  chosen = _topk._choose_digit(jnp.asarray(hist[None], jnp.int32), first_need)
  np.testing.assert_array_equal(np.ravel(chosen), [1, 4, 1])
  # The code's first pass alone (the top 3 bits as keys): prefix 1, need 3 - 1 = 2, ties 4.
  after_one = _topk._radix_select([part], [jnp.asarray(keys >> 3)], first_need, 3, 3)
  np.testing.assert_array_equal(np.ravel(after_one), [1, 2, 4])
  # Pass 2: the low digit of the keys that start with 1.
  hist = np.bincount((keys & 7)[keys >> 3 == 1], minlength=8)
  np.testing.assert_array_equal(hist, [0, 0, 0, 0, 0, 4, 0, 0])
  # Both passes: T = 0o15 = 13, two of its four ties among the 3 largest.
  threshold, need, ties = _topk._radix_select([part], [jnp.asarray(keys)], first_need, 6, 3)
  assert (int(threshold[0]), int(need[0]), int(ties[0])) == (0o15, 2, 4) == (13, 2, 4)
  np.testing.assert_array_equal(np.sort(np.abs(x).ravel())[::-1][k - 1], 13)
  # Tie cut: ties per slab 1, 3 (running 1, 4); slab 1's flags 1, 0, 1, 1 (running 1, 1, 2, 3).
  tied = keys == 13
  np.testing.assert_array_equal(tied.sum(axis=1), [1, 3])
  np.testing.assert_array_equal(np.cumsum(tied.sum(axis=1)), [1, 4])
  np.testing.assert_array_equal(np.cumsum(tied[1]), [1, 1, 2, 3])
  assert np.flatnonzero(tied.ravel())[2 - 1] == 4
  last = _topk._last_kept_tie([part], [jnp.asarray(tied)], need, ties, _topk._Layout.OWN_SHAPE)
  np.testing.assert_array_equal(last, [4])
  # Kept: -42 and the 13 and -13 at flat indices 0 and 4, as a stable sort keeps them.
  out = keep_top_k(jnp.asarray(x), k)
  assert_same(out, reference_keep(x, k), jnp.asarray(x))
  np.testing.assert_array_equal(np.flatnonzero(np.asarray(out).ravel()), [0, 1, 4])


@pytest.mark.parametrize("bins", [256, 32_768, 65_536])
def test_choose_digit_matches_suffix_sums(bins):
  rng = np.random.default_rng(bins)
  hist = rng.integers(0, 3, size=(4, bins)) * (rng.random((4, bins)) < 0.05)
  hist[3] = 0
  hist[3, bins // 3] = 7  # all of a row's entries under one digit
  totals = hist.sum(axis=1)
  for need in ([1, 1, 1, 1], totals, [max(1, t // 2) for t in totals], [2, 3, 5, 7]):
    need = np.asarray(need, np.int32)
    digit, ties, above = _topk._choose_digit(jnp.asarray(hist, jnp.int32), jnp.asarray(need))
    at_least = np.cumsum(hist[:, ::-1], axis=1)[:, ::-1]
    expected = np.asarray([np.flatnonzero(at_least[r] >= need[r]).max() for r in range(4)])
    np.testing.assert_array_equal(digit, expected)
    np.testing.assert_array_equal(ties, hist[np.arange(4), expected])
    np.testing.assert_array_equal(above, at_least[np.arange(4), expected] - ties)


def test_float64_under_x64():
  with enable_x64(True):
    x = jnp.asarray(np.random.default_rng(1).normal(size=(333,)), jnp.float64)
    ties = jnp.asarray(np.random.default_rng(2).integers(-2, 3, size=(200,)), jnp.float64)
    out = jax.jit(lambda leaves: _topk.keep_top_k_leaves(leaves, (33, 90)))([x, ties])
    assert_same(out[0], reference_keep(x, 33), x)
    assert_same(out[1], reference_keep(ties, 90), ties)


def test_k_at_least_size_keeps_everything_and_zero_k_keeps_nothing():
  x = _data("normal", (5, 3), jnp.float32)
  np.testing.assert_array_equal(keep_top_k(x, 15), x)
  np.testing.assert_array_equal(keep_top_k(x, 40), x)
  np.testing.assert_array_equal(_topk.keep_top_k(x, 0), jnp.zeros_like(x))


def test_leaves_each_with_its_own_k():
  leaves = [
    _data("normal", (8, 8), jnp.float32, 1),
    _data("ties", (64,), jnp.float32, 2),  # same size as the first: selected in one batch
    _data("ties", (3, 5, 7), jnp.float32, 3),
    _data("normal", (2_500,), jnp.float32, 4),  # spans several tiles
    _data("normal", (6,), jnp.float32, 5),  # smaller than its k
    _data("ties", (300,), jnp.bfloat16, 6),  # a second key width
    _data("all_equal", (1,), jnp.float32, 7),
  ]
  ks = (5, 20, 50, 25, 10, 40, 1)
  out = _leaves_fn(ks)(leaves)
  for actual, x, k in zip(out, leaves, ks, strict=True):
    assert_same(actual, reference_keep(x, k), x)


def test_global_selection_across_leaves():
  leaves = [
    _data("ties", (10,), jnp.float32, 1),
    _data("ties", (4, 5), jnp.float32, 2),
    _data("normal", (1_500,), jnp.float32, 3),
    _data("ties", (300,), jnp.float32, 4),
  ]
  for k in (1, 37, 400, 1_829):
    out = _global_fn(k)(leaves)
    for actual, expected, x in zip(out, reference_global(leaves, k), leaves, strict=True):
      assert_same(actual, expected, x)


def test_global_selection_with_mixed_dtypes_keeps_each_dtype():
  leaves = [_data("ties", (50,), jnp.bfloat16, 1), _data("normal", (70,), jnp.float32, 2)]
  out = _global_fn(30)(leaves)
  for actual, expected, x in zip(out, reference_global(leaves, 30), leaves, strict=True):
    assert_same(actual, expected, x)


def test_global_edge_cases():
  assert _topk.keep_top_k_global([], 3) == []
  leaves = [_data("normal", (3,), jnp.float32), _data("normal", (2,), jnp.float32, 1)]
  for actual, x in zip(_topk.keep_top_k_global(leaves, 9), leaves, strict=True):
    np.testing.assert_array_equal(actual, x)


def test_mismatched_ks_are_rejected():
  with pytest.raises(ValueError, match="2 leaves but 1 values of k"):
    _topk.keep_top_k_leaves([jnp.ones(3), jnp.ones(2)], [1])


@settings(max_examples=12, deadline=None)
@given(
  x=hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=9),
    elements=st.sampled_from([0.0, 1.0, -1.0, 2.5, -2.5, 1e-3, 7.0, -1e30]),
  ),
  fraction=st.floats(0.0, 1.0),
)
def test_property_matches_stable_sort(x, fraction):
  k = max(1, round(fraction * x.size))
  out = _topk.keep_top_k(jnp.asarray(x), k)
  np.testing.assert_array_equal(np.asarray(out, np.float64), reference_keep(x, k))
  # Exactly k survive where k entries are nonzero; every kept entry is at least as large as any
  # dropped one.
  assert int(np.sum(np.asarray(out) != 0)) == min(k, int(np.sum(x != 0)))
  kept = np.asarray(out) != 0
  if kept.any() and (~kept).any():
    assert np.abs(x[kept]).min() >= np.abs(x[~kept & (x != 0)]).max(initial=0.0)
