"""Exact top-k magnitude selection used by the top-k residual scheme.

:func:`jax.lax.top_k` sorts the whole array on CPU and GPU, which makes a top-k residual step many
times dearer than the base optimizer's. Here the ``k``-th largest magnitude is found instead by a radix
select on the float bits: with the sign bit cleared, a float's bits read as an unsigned integer order
the same way as its magnitude, so a few histogram passes, over the top bits and then over the next
bits of only the entries whose higher bits match the digits chosen so far, give the exact threshold
``T``. One masked pass then keeps every entry above ``T`` and, of the entries equal to ``T``, the ones
with the lowest flat indices, so that exactly ``k`` survive: the same set as a stable sort by
descending magnitude, or :func:`jax.lax.top_k`. A tie is cut (common for large float32 leaves, whose
values recur) by counting the tied entries per tile and looking inside the one tile per row where the
count crosses the number to keep; this runs only when some row cuts a tie.

The small leaves of a model (most of its ~160) are laid out once as rows of a single tile array (each
leaf padded to whole tiles, each tile tagged with its leaf), so each histogram pass over all of them
is one fused pass and one scatter into per-leaf counters, and the compiled program grows by only one
tiling and one output piece per leaf. Leaves of ``_OWN_SELECTION_SIZE`` entries or more are selected
on their own: they need no copy into that layout and their histograms take wider digits.

A leaf that may be split across devices (on a mesh of several devices, with a partition spec naming
an explicit axis, or on a mesh with ``Auto`` axes, whose sharding a trace does not see) is selected
in its own shape instead: every histogram is a scatter from the leaf's entries, in place, into a few
replicated counters, so the partitioner counts each shard where it lies and all-reduces only the
counters. A tie is cut the same way, by a second radix select on the flat indices of the tied
entries. Nothing leaf-sized is gathered or reshaped across devices, and the kept set is the same
as on one device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

# Counters of one histogram pass, over all rows: 2**20 int32 counters (4 MiB) stay in cache, and
# wider digits mean fewer passes. Digits narrower than 8 bits are slow on CPU (entries pile up on the
# same counter), and 16 bits already take a float32 magnitude in two passes.
_MAX_COUNTER_BITS = 20
_MAX_DIGIT_BITS = 16
_MIN_DIGIT_BITS = 8
# Tied entries are counted in chunks of this many (uint8 sums of 32 flags vectorize on CPU).
_CHUNK = 32
# Entries per tile of the common layout (the padding of a leaf's last tile is at most this).
_TILE_WIDTH = 1024
# Leaves at least this large get a selection of their own rather than a row of the shared layout.
_OWN_SELECTION_SIZE = 1 << 18

# Histogram counters are a flat vector; each entry adds 1 to the counter its index names.
_HISTOGRAM_SCATTER = jax.lax.ScatterDimensionNumbers(
  update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
)

_KEY_DTYPES = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


class _Tiles(NamedTuple):
  """Several flat arrays laid out as ``(tiles, width)``, each tile within one selection row.

  Attributes:
    values: ``(tiles, width)``; the tail of each array's last tile is zero padding.
    row: ``(tiles,)`` the selection row each tile belongs to.
    start: ``(tiles,)`` flat index, within its row, of each tile's first entry (for tie order).
    valid: ``(tiles, width)`` bool, False on padding; None where there is no padding.
    padding: ``(rows,)`` how many padding entries (zeros) each row's tiles hold.
    span: one more than the largest flat index within any row.
  """

  values: jax.Array
  row: jax.Array
  start: jax.Array
  valid: jax.Array | None
  padding: np.ndarray
  span: int
  first_tile: list[int]
  first_tile_of_row: np.ndarray  # (rows,) each row's first tile (0 for a row with none)


def _magnitude_keys(x: jax.Array) -> jax.Array:
  """Unsigned integers ordered as ``|x|`` is (the bits of ``|x|``, sign bit clear), in x's shape."""
  key_dtype = _KEY_DTYPES[jnp.dtype(x.dtype).itemsize]
  return jax.lax.bitcast_convert_type(jnp.abs(x), key_dtype)


def _kept(keys: jax.Array, threshold: jax.Array, order: jax.Array, last: jax.Array) -> jax.Array:
  """True where a key exceeds ``threshold``, or equals it at reversed flat index ``>= last``."""
  return (keys > threshold) | ((keys == threshold) & (order >= last))


def _tile(arrays: Sequence[jax.Array], rows: Sequence[int], offsets: Sequence[int]) -> _Tiles:
  """Lays ``arrays[i]`` (row ``rows[i]``, first flat index ``offsets[i]``) out as tiles."""
  width = min(_TILE_WIDTH, 1 << max(0, int(max(a.size for a in arrays) - 1).bit_length()))
  pieces: list[jax.Array] = []
  tile_row: list[int] = []
  tile_start: list[int] = []
  tile_count: list[int] = []
  first_tile: list[int] = []
  for array, row, offset in zip(arrays, rows, offsets, strict=True):
    key = array.reshape(-1)
    first_tile.append(len(tile_row))
    tiles = -(-key.size // width)
    pieces.append(jnp.pad(key, (0, tiles * width - key.size)).reshape(tiles, width))
    tile_row += [row] * tiles
    tile_start += [offset + t * width for t in range(tiles)]
    tile_count += [min(width, key.size - t * width) for t in range(tiles)]
  first_tile_of_row = np.zeros(max(rows) + 1, np.int32)
  row_ids, first_tiles = np.unique(np.asarray(tile_row), return_index=True)
  first_tile_of_row[row_ids] = first_tiles
  padding = np.zeros(max(rows) + 1, np.int32)
  np.add.at(padding, np.asarray(tile_row, np.int64), width - np.asarray(tile_count, np.int32))
  valid: jax.Array | None = None
  if min(tile_count) < width:
    count = jnp.asarray(np.asarray(tile_count, np.int32))
    valid = jax.lax.broadcasted_iota(jnp.int32, (len(tile_count), width), 1) < count[:, None]
  return _Tiles(
    values=pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces),
    row=jnp.asarray(np.asarray(tile_row, np.int32)),
    start=jnp.asarray(np.asarray(tile_start, np.int32)),
    valid=valid,
    padding=padding,
    span=max(offset + a.size for a, offset in zip(arrays, offsets, strict=True)),
    first_tile=first_tile,
    first_tile_of_row=first_tile_of_row,
  )


def _digit_widths(key_bits: int, rows: int) -> list[int]:
  """Digit widths, most significant first, covering ``key_bits`` bits with ``rows`` histograms."""
  row_bits = max(0, int(rows - 1).bit_length())
  width = max(_MIN_DIGIT_BITS, min(_MAX_DIGIT_BITS, _MAX_COUNTER_BITS - row_bits))
  passes = -(-key_bits // width)
  base, extra = divmod(key_bits, passes)
  return [base + 1 if i < extra else base for i in range(passes)]


def _suffix_sums(hist: jax.Array) -> jax.Array:
  """``out[r, b] = sum(hist[r, b:])``."""
  return jax.lax.cumsum(hist, axis=1, reverse=True)


def _choose_digit(hist: jax.Array, need: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per row of ``hist`` (rows, bins), the largest digit with at least ``need`` entries at or above.

  Returns ``(digit, ties, above)``: the digit, its count, and the count of larger digits. The
  suffix sums are taken over groups of bins and then within the chosen group only: a suffix sum
  over all 2**16 bins costs more on CPU than the rest of the choice (XLA lowers it as a tree of
  windowed reductions).
  """
  rows, bins = hist.shape
  group = 1 << ((bins.bit_length() - 1) // 2)
  grouped = hist.reshape(rows, bins // group, group)
  group_totals = jnp.sum(grouped, axis=2, dtype=jnp.int32)
  group_at_least = _suffix_sums(group_totals)
  chosen_group = jnp.sum(group_at_least >= need[:, None], axis=1, dtype=jnp.int32) - 1
  above_group = jnp.take_along_axis(group_at_least - group_totals, chosen_group[:, None], axis=1)
  within = jnp.take_along_axis(grouped, chosen_group[:, None, None], axis=1)[:, 0]
  at_least = _suffix_sums(within) + above_group
  chosen = jnp.sum(at_least >= need[:, None], axis=1, dtype=jnp.int32) - 1
  ties = jnp.take_along_axis(within, chosen[:, None], axis=1)[:, 0]
  above = jnp.take_along_axis(at_least, chosen[:, None], axis=1)[:, 0] - ties
  return chosen_group * group + chosen, ties, above


def _radix_select(
  keys: jax.Array, row: jax.Array, padding: np.ndarray, need: jax.Array, key_bits: int
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Per row, the ``need``-th largest of the valid ``keys`` (tiles, width) of that row's tiles.

  Args:
    keys: ``(tiles, width)`` unsigned keys using their low ``key_bits`` bits; padding keys are 0.
    row: ``(tiles,)`` the row of each tile, ``0 <= row < len(need)``.
    padding: ``(rows,)`` how many of each row's keys are padding, not to be counted.
    need: ``(rows,)`` int32, between 1 and the number of valid entries of the row.
    key_bits: how many low bits the keys use.

  Returns:
    ``(threshold, need, ties, tied)``: per row (each ``(rows,)``), the selected key, how many
    entries equal to it are selected (``need`` minus the number of larger keys) and how many valid
    entries equal it; and ``(tiles, width)`` bool, True where a key equals its row's threshold
    (padding included when the threshold is 0). ``tied`` is derived from the last pass's
    histogram indices, not from the keys, so that a conditional taking it as an operand does not
    hold on to the values.
  """
  rows = need.shape[0]
  prefix = jnp.zeros((rows,), keys.dtype)
  ties = jnp.zeros((rows,), jnp.int32)
  pad = jnp.asarray(padding) if padding.any() else None
  shift = key_bits
  for width in _digit_widths(key_bits, rows):
    shift -= width
    bins = 1 << width
    counters = rows * bins
    first = shift + width == key_bits
    # Later passes send the entries outside the prefix chosen so far to counter `counters`, out of
    # range, which the scatter drops. 16-bit indices, where they fit, make the pass ~1.6x faster
    # on CPU: the index array is a params-sized temporary.
    index_dtype = jnp.uint16 if counters + (0 if first else 1) <= 1 << 16 else jnp.int32
    digit = ((keys >> shift) & (bins - 1)).astype(index_dtype)
    if rows > 1:
      digit = digit + (row * bins).astype(index_dtype)[:, None]
    if not first:
      in_prefix = (keys >> (shift + width)) == prefix[row][:, None]
      digit = jnp.where(in_prefix, digit, jnp.asarray(counters, index_dtype))
    hist = jax.lax.scatter_add(
      jnp.zeros((counters,), jnp.int32),
      digit.reshape(-1, 1),
      jnp.ones((digit.size,), jnp.int32),
      _HISTOGRAM_SCATTER,
      mode=jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS
      if first
      else jax.lax.GatherScatterMode.FILL_OR_DROP,
    ).reshape(rows, bins)
    if pad is not None:
      # Padding entries are zeros (key 0): counted, in digit 0, while a row's prefix is still 0.
      hist = hist.at[:, 0].add(-jnp.where(prefix == 0, pad, 0))
    chosen, ties, above = _choose_digit(hist, need)
    need = need - above
    prefix = (prefix << width) | chosen.astype(keys.dtype)
  # An entry's last-pass index is its row's chosen counter exactly when its whole key equals the
  # threshold (entries outside the prefix were sent to the out-of-range counter).
  counter = chosen + jnp.arange(rows, dtype=jnp.int32) * bins
  tied = digit == counter.astype(index_dtype)[row][:, None]
  return prefix, need, ties, tied


def _select_top_k(
  leaves: Sequence[jax.Array], rows: Sequence[int], offsets: Sequence[int], ks: Sequence[int]
) -> list[jax.Array]:
  """Each leaf with all but the entries among its row's ``ks[row]`` largest magnitudes zeroed.

  ``leaves`` share one float dtype; ``offsets[i]`` is leaf ``i``'s first flat index within its row
  (ties go to the lower one).
  """
  tiles = _tile(leaves, rows, offsets)
  keys = _magnitude_keys(tiles.values)
  key_bits = 8 * jnp.dtype(keys.dtype).itemsize - 1
  need = jnp.asarray(np.asarray(ks, np.int32))
  threshold, need, ties, tied = _radix_select(keys, tiles.row, tiles.padding, need, key_bits)
  span = tiles.span

  def reversed_index(start: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """``span - 1 - flat index``: larger for lower indices, so that a select prefers them."""
    index = jax.lax.broadcasted_iota(jnp.int32, shape, len(shape) - 1) + start
    return (span - 1 - index).astype(jnp.uint32)

  def keep_all_ties(_: None) -> jax.Array:
    return jnp.zeros(need.shape, jnp.uint32)

  def cut_ties(_: None) -> jax.Array:
    # The need-th tied entry in flat order, found through per-tile counts of tied entries: one
    # counting pass, then a look inside the one tile per row where the count crosses `need`.
    # The branch reads the tied flags, not the values: whatever it captures becomes an operand
    # of the conditional, and a captured value array could no longer be updated in place.
    valid_tied = tied if tiles.valid is None else tied & tiles.valid
    n_tiles, width = valid_tied.shape
    chunk = min(_CHUNK, width)
    # uint8 sums over chunks of 32 vectorize on XLA's CPU backend; int32 sums of long rows do not.
    chunk_counts = jnp.sum(
      valid_tied.reshape(n_tiles, width // chunk, chunk).astype(jnp.uint8), axis=2, dtype=jnp.uint8
    )
    per_tile = jnp.sum(chunk_counts, axis=1, dtype=jnp.int32)
    # Tied entries up to and including each tile; a row's tiles are contiguous.
    through = jnp.cumsum(per_tile)
    first = jnp.asarray(tiles.first_tile_of_row)
    within = through - (through[first] - per_tile[first])[tiles.row]
    target = need[tiles.row]
    crossing = (within >= target) & (within - per_tile < target)
    tile_index = jnp.arange(n_tiles, dtype=jnp.int32)
    hit = jnp.full(need.shape, -1, jnp.int32).at[tiles.row].max(jnp.where(crossing, tile_index, -1))
    hit = jnp.maximum(hit, 0)
    before = within[hit] - per_tile[hit]
    hit_tied = valid_tied[hit]
    running = jnp.cumsum(hit_tied, axis=1, dtype=jnp.int32)
    position = jnp.sum(running < (need - before)[:, None], axis=1, dtype=jnp.int32)
    cut = (span - 1 - (tiles.start[hit] + position)).astype(jnp.uint32)
    return jnp.where(need < ties, cut, 0).astype(jnp.uint32)

  # The cut runs only when a row has more entries equal to its threshold than it keeps. That is
  # common for large float32 leaves (2**23 mantissas per binade: equal values recur).
  # `last` is the reversed index of the last tied entry kept (0 keeps them all).
  last = jax.lax.cond(jnp.any(need < ties), cut_ties, keep_all_ties, None)
  if len(leaves) == 1 and tiles.valid is None and offsets[0] == 0:
    return [_keep_above(leaves[0], threshold[0], last[0], span)]
  tile_threshold = threshold[tiles.row][:, None]
  order = reversed_index(tiles.start[:, None], keys.shape)
  kept = _kept(keys, tile_threshold, order, last[tiles.row][:, None])
  kept_values = jnp.where(kept, tiles.values, jnp.zeros_like(tiles.values)).reshape(-1)
  width = tiles.values.shape[1]
  out = []
  for leaf, first in zip(leaves, tiles.first_tile, strict=True):
    out.append(kept_values[first * width : first * width + leaf.size].reshape(leaf.shape))
  return out


def _keep_above(leaf: jax.Array, threshold: jax.Array, last: jax.Array, span: int) -> jax.Array:
  """``leaf`` where its key exceeds ``threshold`` or equals it at reversed flat index ``>= last``.

  Computed in the leaf's own shape, with no reshape: then XLA sees an elementwise function of the
  leaf and may write the residual's update in place over it instead of in a fresh temporary.
  """
  keys = _magnitude_keys(leaf)
  index = jnp.zeros(leaf.shape, jnp.int32)
  stride = 1
  for axis in reversed(range(leaf.ndim)):
    index = index + jax.lax.broadcasted_iota(jnp.int32, leaf.shape, axis) * stride
    stride *= leaf.shape[axis]
  order = (span - 1 - index).astype(jnp.uint32)
  return jnp.where(_kept(keys, threshold, order, last), leaf, jnp.zeros_like(leaf))


def _may_be_split(x: jax.Array) -> bool:
  """Whether ``x`` may be split across devices, so that it must be selected in its own shape.

  True on a mesh of several devices when its partition spec names an (explicit) axis, or when the
  mesh has ``Auto`` axes: their sharding is the partitioner's choice, which a trace does not see.
  A leaf on one device, replicated over explicit axes, or local to a ``shard_map`` body is not.
  """
  sharding = jax.typeof(x).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or mesh.size <= 1:
    return False
  if any(axis is not None for axis in sharding.spec):
    return True
  return any(
    kind == AxisType.Auto and size > 1
    for kind, size in zip(mesh.axis_types, mesh.shape.values(), strict=True)
  )


def _split_digit_bits(size: int) -> int:
  """The digit width of an in-place selection of ``size`` entries (leaves that may be sharded).

  Every pass all-reduces its counters, so they are sized to the selection (about a sixteenth of its
  entries, 2**8 to 2**16 counters) rather than to a cache: a small leaf costs a few more passes of
  small counters, not two passes of 256 KiB each.
  """
  return max(_MIN_DIGIT_BITS, min(_MAX_DIGIT_BITS, int(size - 1).bit_length() - 4))


def _even_digits(key_bits: int, width: int) -> list[int]:
  """Digit widths of at most ``width`` bits, most significant first, covering ``key_bits`` bits."""
  passes = -(-key_bits // width)
  base, extra = divmod(key_bits, passes)
  return [base + 1 if i < extra else base for i in range(passes)]


def _select_in_place(
  keys: Sequence[jax.Array],
  rows: Sequence[int],
  counted: Sequence[jax.Array] | None,
  need: jax.Array,
  key_bits: int,
  width: int,
) -> tuple[jax.Array, jax.Array, jax.Array, list[jax.Array]]:
  """Per row, the ``need``-th largest of the counted entries of the ``keys`` of that row.

  Each pass scatters every array's digits, in the array's own shape, into counters of its own,
  summed per row: a sharded array is counted shard by shard and only its counters cross devices.

  Args:
    keys: arrays of one unsigned dtype using their low ``key_bits`` bits, each in its own shape.
    rows: the row of each array, ``0 <= rows[i] < len(need)``.
    counted: bool arrays shaped as ``keys``, False for entries not to count; None counts all.
    need: ``(rows,)`` int32, between 1 and the number of counted entries of the row.
    key_bits: how many low bits the keys use.
    width: the widest digit, in bits.

  Returns:
    ``(key, need, ties, tied)``: per row (each ``(rows,)``), the selected key, how many of the
    counted entries equal to it are among the ``need`` largest, and how many counted entries equal
    it; and per array, True where a counted entry equals its row's key. ``tied`` is read off the
    last pass's counter indices (1 byte an entry), so that a conditional taking it holds no copy of
    the keys.
  """
  dtype = keys[0].dtype
  n_rows = need.shape[0]
  prefix = jnp.zeros((n_rows,), dtype)
  ties = jnp.zeros((n_rows,), jnp.int32)
  shift = key_bits
  for digit_bits in _even_digits(key_bits, width):
    shift -= digit_bits
    bins = 1 << digit_bits
    first = shift + digit_bits == key_bits
    drops = counted is not None or not first
    # 16-bit indices where the bins (and the dropped one) fit: the index array is shard-sized.
    index_dtype = jnp.uint16 if bins + int(drops) <= 1 << 16 else jnp.int32
    # Each array counts into counters of its own, all-reduced on their own (XLA combines them):
    # a shared vector with one row per array would all-reduce every row once per array.
    hist = [jnp.zeros((bins,), jnp.int32) for _ in range(n_rows)]
    digits = []
    for i, (key, row) in enumerate(zip(keys, rows, strict=True)):
      digit = ((key >> shift) & (bins - 1)).astype(index_dtype)
      keep = None if counted is None else counted[i]
      if not first:
        in_prefix = (key >> (shift + digit_bits)) == prefix[row]
        keep = in_prefix if keep is None else keep & in_prefix
      if keep is not None:
        digit = jnp.where(keep, digit, jnp.asarray(bins, index_dtype))
      digits.append(digit)
      hist[row] = hist[row] + jax.lax.scatter_add(
        jnp.zeros((bins,), jnp.int32),
        digit[..., None],
        jnp.ones(digit.shape, jnp.int32),
        _HISTOGRAM_SCATTER,
        mode=jax.lax.GatherScatterMode.FILL_OR_DROP
        if drops
        else jax.lax.GatherScatterMode.PROMISE_IN_BOUNDS,
      )
    chosen, ties, above = _choose_digit(jnp.stack(hist), need)
    need = need - above
    prefix = (prefix << digit_bits) | chosen.astype(dtype)
  # An entry's last index is its row's chosen digit exactly when it is counted and its key equals
  # the row's selected key (the others were sent to the dropped counter `bins`).
  tied = [digit == chosen[row].astype(digit.dtype) for digit, row in zip(digits, rows, strict=True)]
  return prefix, need, ties, tied


def _reversed_flat_index(shape: tuple[int, ...], offset: int, span: int) -> jax.Array:
  """``span - 1 - (offset + flat index)`` of each entry of ``shape``, built in that shape (uint32)."""
  index = jnp.full(shape, span - 1 - offset, jnp.int32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index - jax.lax.broadcasted_iota(jnp.int32, shape, axis) * stride
    stride *= shape[axis]
  return index.astype(jnp.uint32)


def _keep_top_k_in_place(
  leaves: Sequence[jax.Array], rows: Sequence[int], offsets: Sequence[int], ks: Sequence[int]
) -> list[jax.Array]:
  """Each leaf with all but the entries among its row's ``ks[row]`` largest magnitudes zeroed.

  Leaves share one float dtype; ``offsets[i]`` is leaf ``i``'s first flat index within its row
  (ties go to the lower one). No array is reshaped or concatenated: the partitioner keeps each leaf
  in its own sharding, and each pass all-reduces each leaf's counters (XLA combines them into a few
  all-reduces).
  """
  keys = [_magnitude_keys(leaf) for leaf in leaves]
  key_bits = 8 * jnp.dtype(keys[0].dtype).itemsize - 1
  n_rows = len(ks)
  spans = [0] * n_rows
  sizes = [0] * n_rows
  for leaf, row, offset in zip(leaves, rows, offsets, strict=True):
    spans[row] = max(spans[row], offset + leaf.size)
    sizes[row] += leaf.size
  width = _split_digit_bits(max(sizes))
  need = jnp.asarray(np.asarray(ks, np.int32))
  threshold, need, ties, tied = _select_in_place(keys, rows, None, need, key_bits, width)

  def orders() -> list[jax.Array]:
    return [
      _reversed_flat_index(leaf.shape, offset, spans[row])
      for leaf, row, offset in zip(leaves, rows, offsets, strict=True)
    ]

  def cut_ties(_: None) -> jax.Array:
    # Of each row's tied entries, the `need` with the lowest flat indices: a radix select on the
    # reversed flat index, counting only the tied entries (indices are distinct, so it is exact).
    # A row that keeps all its ties selects its last tied entry, which keeps them all too.
    index_bits = max(1, int(max(spans) - 1).bit_length())
    return _select_in_place(orders(), rows, tied, need, index_bits, width)[0]

  def keep_all_ties(_: None) -> jax.Array:
    return jnp.zeros((n_rows,), jnp.uint32)

  last = jax.lax.cond(jnp.any(need < ties), cut_ties, keep_all_ties, None)
  return [
    jnp.where(_kept(key, threshold[row], order, last[row]), leaf, jnp.zeros_like(leaf))
    for leaf, key, row, order in zip(leaves, keys, rows, orders(), strict=True)
  ]


def _on_auto_axes(fn, leaves: Sequence[jax.Array]) -> list[jax.Array]:
  """``fn(leaves)`` with the mesh's explicit axes turned ``Auto``, each result in its leaf's spec.

  Under explicit axes every op must say how its output is sharded; the selection's scatters have no
  such rule. Inside ``auto_axes`` the partitioner places them (local counts, all-reduced counters),
  and the results come back sharded as the leaves are.
  """
  shardings = [jax.typeof(leaf).sharding for leaf in leaves]
  mesh = next(s.mesh for s in shardings if not s.mesh.empty)
  if AxisType.Explicit not in mesh.axis_types:
    return fn(leaves)
  with jax.sharding.use_abstract_mesh(mesh):
    return jax.sharding.auto_axes(fn, out_sharding=[s.spec for s in shardings])(list(leaves))


def _common_float(leaves: Sequence[jax.Array]) -> jnp.dtype:
  """The float dtype that holds every leaf's values exactly (explicit, for strict promotion)."""
  dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
  widest = max(dtypes, key=lambda d: d.itemsize)
  if len(dtypes) > 1 and widest.itemsize == 2:  # bfloat16 with float16: neither holds the other
    return jnp.dtype(jnp.float32)
  return widest


def keep_top_k(x: jax.Array, k: int) -> jax.Array:
  """Returns ``x`` with all but its ``k`` largest-magnitude entries set to zero.

  Exactly ``min(k, x.size)`` entries survive; ties in magnitude go to the lower flat index.
  ``k`` must be a Python int (it is static under ``jit``).
  """
  return keep_top_k_leaves([x], [k])[0]


def keep_top_k_leaves(leaves: Sequence[jax.Array], ks: Sequence[int]) -> list[jax.Array]:
  """Keeps the ``ks[i]`` largest-magnitude entries of each ``leaves[i]``, zeroing the rest.

  All leaves whose magnitudes have the same bit width are selected together: each histogram pass is
  one scatter over all of them into per-leaf counters.
  """
  if len(leaves) != len(ks):
    raise ValueError(f"Got {len(leaves)} leaves but {len(ks)} values of k.")
  out = list(leaves)
  groups: dict[tuple[int, int], list[int]] = {}
  split_groups: dict[tuple[int, int], list[int]] = {}
  for i, (leaf, k) in enumerate(zip(leaves, ks, strict=True)):
    if int(k) <= 0:
      out[i] = jnp.zeros_like(leaf)
    elif int(k) < leaf.size and _may_be_split(leaf):
      # Selected in its own shape (a shared layout, or a flat view, would gather it), beside the
      # leaves whose counters have the same width.
      bits = _split_digit_bits(leaf.size)
      split_groups.setdefault((jnp.dtype(leaf.dtype).itemsize, bits), []).append(i)
    elif int(k) < leaf.size:
      # A large leaf is selected on its own: it needs no copy into the shared layout, and its
      # histograms can use wider digits (fewer passes).
      group = i if leaf.size >= _OWN_SELECTION_SIZE else -1
      groups.setdefault((jnp.dtype(leaf.dtype).itemsize, group), []).append(i)
  for members in split_groups.values():
    rows = list(range(len(members)))
    member_ks = [int(ks[i]) for i in members]
    kept = _on_auto_axes(
      lambda ls, rows=rows, member_ks=member_ks: _keep_top_k_in_place(
        ls, rows, [0] * len(ls), member_ks
      ),
      [leaves[i] for i in members],
    )
    for i, leaf in zip(members, kept, strict=True):
      out[i] = leaf
  for members in groups.values():
    kept = _select_top_k(
      [leaves[i] for i in members],
      rows=list(range(len(members))),
      offsets=[0] * len(members),
      ks=[int(ks[i]) for i in members],
    )
    for i, leaf in zip(members, kept, strict=True):
      out[i] = leaf
  return out


def keep_top_k_global(leaves: Sequence[jax.Array], k: int) -> list[jax.Array]:
  """Keeps the ``k`` largest-magnitude entries across all leaves together.

  Magnitudes are compared in the leaves' common dtype; ties go to the earlier leaf, then to the lower
  flat index, as in a stable sort of the concatenated leaves.
  """
  if not leaves:
    return []
  k = int(k)
  if k >= sum(leaf.size for leaf in leaves):
    return list(leaves)
  if k <= 0:
    return [jnp.zeros_like(leaf) for leaf in leaves]
  dtype = _common_float(leaves)
  offsets = np.cumsum([0] + [leaf.size for leaf in leaves[:-1]]).tolist()
  cast = [leaf.astype(dtype) for leaf in leaves]
  if any(_may_be_split(leaf) for leaf in leaves):
    # Each leaf stays in its own shape and sharding; only the counters are summed over them.
    kept = _on_auto_axes(lambda ls: _keep_top_k_in_place(ls, [0] * len(ls), offsets, [k]), cast)
  else:
    kept = _select_top_k(cast, rows=[0] * len(leaves), offsets=offsets, ks=[k])
  return [kept_leaf.astype(leaf.dtype) for kept_leaf, leaf in zip(kept, leaves, strict=True)]
