"""Exact top-k magnitude selection used by the top-k residual scheme.

:func:`jax.lax.top_k` sorts the whole array on CPU and GPU, which makes a top-k residual step many
times dearer than the base optimizer's. Here the ``k``-th largest magnitude ``T`` is found by a radix
select on the float bits (with the sign bit cleared they order as the magnitudes do): a histogram of
the top bits, then of the next bits of the entries whose higher bits match the digits chosen so far.
Every entry above ``T`` is kept and, of those equal to it, the ones with the lowest flat indices: the
same ``k`` as a stable sort by descending magnitude, or :func:`jax.lax.top_k`.

A selection has *rows* (a leaf each for per-leaf top-k, one for the global top-k) and counts their
entries as *parts*, arrays whose last axis holds *slabs* of consecutive flat indices: small leaves
copied together as tiles (one scatter a pass counts them all), a large leaf as a free ``(slabs,
width)`` view of itself, a leaf that may be split across devices in its own shape (its shards counted
where they lie, only counters all-reduced). Ties at ``T`` are cut from per-slab counts of the tied
entries, then one slab. Every leaf is masked in its own shape, so XLA may write the result in place.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

# One scatter's 2**20 int32 counters (4 MiB) stay in cache, and wider digits mean fewer passes.
# Digits under 8 bits are slow on CPU (entries pile up on a counter); 16 take float32 in two passes.
_MAX_COUNTER_BITS = 20
_MAX_DIGIT_BITS = 16
_MIN_DIGIT_BITS = 8
# Tied entries are counted in chunks of this many (uint8 sums of 32 flags vectorize on CPU).
_CHUNK = 32
# Entries per tile of the copied small leaves (the padding of a leaf's last tile is at most this).
_TILE_WIDTH = 1024
# Leaves at least this large are counted as views of themselves rather than copied into tiles.
_OWN_PART_SIZE = 1 << 18
_KEY_DTYPES = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}

# How the selection works
# =======================
#
# Keys. With its sign bit cleared, a float's bits read as an unsigned integer order as its
# magnitude does (the exponent lies above the mantissa), so the k largest magnitudes are the k
# largest keys ``bits(|x|)``: 31-bit keys for float32, 15-bit for bfloat16 and float16, 63-bit for
# float64. Everything below works on keys and never compares floats.
#
# Radix select (``_radix_select``). The k-th largest key T is found digit by digit from the top.
# The key is cut into digits of d bits (``_digit_bits``; float32's 31 bits go in two passes, of
# 16 and 15 bits). Two values are carried from pass to pass: ``prefix``, the digits of T chosen so
# far, and ``need``, how many of the k largest keys are still to be found among the keys that start
# with ``prefix`` (``need = k`` at first, when the prefix is empty). A pass
#   1. counts the next digit of each key that starts with ``prefix``, a histogram ``hist`` of
#      2**d bins (keys with another prefix go to one extra counter, which the scatter drops);
#   2. takes T's next digit ``c`` as the largest digit whose suffix sum reaches ``need``:
#      ``at_least[c] = hist[c] + hist[c + 1] + ...  >= need > at_least[c + 1]``
#      (``_choose_digit``);
#   3. counts the ``above = at_least[c + 1]`` keys of larger digits as found, as all of them are
#      among the k largest: ``need -= above``, ``prefix = prefix * 2**d + c``.
# Since ``above < need <= at_least[c]``, ``need`` stays between 1 and ``hist[c]``. After the last
# pass ``prefix`` is T, ``ties = hist[c]`` is the number of keys equal to T, and ``need`` the number
# of them among the k largest; the ``k - need`` keys above T are all among them.
#
# The tie cut (``_last_kept_tie``). A stable sort by descending magnitude puts, of the keys equal
# to T, the ones of lowest flat index first, so it keeps the ``need`` tied entries of lowest flat
# index. The flat index ``last`` of the need-th of them is found without a running sum over the
# whole row: the tied entries of each slab (a run of consecutive flat indices) are counted; the
# running total of those counts first reaches ``need`` in the slab that holds the entry; a running
# sum over that one slab's tie flags gives its position there. Where ``need == ties`` every tie is
# kept and nothing is cut (``last`` is the largest int32). An entry is then kept where
#   ``key > T``  or  ``key == T and flat index <= last``,
# exactly ``k`` entries, the same as the stable sort's.
#
# Worked example (``test_worked_example_of_the_derivation`` in tests/topk_test.py runs these
# numbers through the code and checks each line against NumPy). Take 6-bit keys cut into 3-bit
# digits, so that the digits are the octal digits of the key; a leaf of 8 entries in 2 slabs of 4
# (a (2, 4) leaf in its own shape); k = 3:
#
#   flat index      0    1    2    3  |   4    5    6    7
#   x              13  -42    7   -5  | -13    3   13   13
#   key (octal)    15   52   07   05  |  15   03   15   15
#
#   Pass 1, the top digit of every key (need = 3):
#     digit        0  1  2  3  4  5  6  7
#     hist         3  4  0  0  0  1  0  0
#     at_least     8  5  1  1  1  1  0  0
#     c = 1 (5 >= 3 > 1): above = 1 (the 42), need = 3 - 1 = 2, prefix = 1.
#   Pass 2, the low digit of the keys that start with 1 (the four 13s; the rest are dropped):
#     hist[5] = 4, every other bin 0; c = 5 (4 >= 2 > 0): above = 0, need = 2, ties = 4.
#     T = 0o15 = 13.
#   Tie cut, need = 2 < ties = 4:
#     tied entries per slab 1, 3; running totals 1, 4: the 2nd tie lies in slab 1, where it is
#     the (2 - 1) = 1st; slab 1's tie flags 1, 0, 1, 1 have running sums 1, 1, 2, 3, which first
#     reach 1 at position 0: last = 4 + 0 = 4.
#   Kept: -42 (above T) and the 13 and -13 at flat indices 0 and 4; the 13s at 6 and 7 are cut.
#
# Rows and parts. One call selects in several rows at once (a leaf each for the per-leaf top-k,
# one for the global top-k), each row with its own k, prefix and need. A pass makes one scatter-add
# per part, into ``rows * 2**d`` counters: an entry's counter is ``row * 2**d + digit``, with its
# row numbered within the part, and the counters reshaped to ``(rows, 2**d)`` are each row's
# histogram (``_by_row`` adds up a row's histograms from several parts). A digit is 8 to 16 bits
# wide (``_digit_bits``), as wide as keeps one scatter's counters within 2**20 int32 (4 MiB) and,
# where they are all-reduced across devices, within a 16th of a row's entries. In the tie cut, a
# slab's index in the concatenated per-slab counts, ordered by row then flat index, names its row
# and its first flat index (``_Part.slab_rows`` and ``_Part.slab_starts``).
#
# Padding. The last tile of a copied leaf is padded with zeros: key 0, so digit 0 in every pass,
# and never above T (a row's own entries reach k, as k < its size). Where T = 0 the padding is
# counted among the ties, so a cut is made even where the row keeps all its zeros; the cut's tie
# flags leave the padding out (``_Part.valid``), so it keeps the right zeros.


class _Layout(enum.Enum):
  """How a selection lays out its leaves as parts to count them.

  ``PACKED`` (leaves on one device): the small leaves are copied together into tiles, one part; a
  large leaf whose size has a factor of 32 is a part of its own, a free ``(slabs, width)`` view of
  itself. Every part is 2-D and its slabs are a multiple of 32 entries wide, so tied entries are
  counted in uint8 chunks and a slab is read with a gather.

  ``OWN_SHAPE`` (leaves that may be split across devices): every leaf is a part of its own, in its
  own shape and sharding, its slabs the runs along its last axis. Each device counts its shards and
  only counters are all-reduced: a reshape, or a gather of one slab, could move a whole leaf.
  """

  PACKED = enum.auto()
  OWN_SHAPE = enum.auto()

  @classmethod
  def of(cls, leaves: Sequence[jax.Array]) -> _Layout:
    """``OWN_SHAPE`` if any of ``leaves`` may be split across devices, else ``PACKED``."""
    return cls.OWN_SHAPE if any(_may_be_split(leaf) for leaf in leaves) else cls.PACKED


class _Part(NamedTuple):
  """Entries of some rows of a selection, counted by one scatter per histogram pass.

  Attributes:
    values: the entries; each index of the leading axes is a slab, as long as the last axis.
    valid: shaped as ``values``, False on the zero padding of tiles; None where there is none.
    first_row: the part's rows are ``first_row`` to ``first_row + rows - 1``.
    slab_rows: ``(slabs,)`` the row of each slab (in the order of the flattened leading axes).
    slab_starts: ``(slabs,)`` the flat index, within its row, of each slab's first entry.
  """

  values: jax.Array
  valid: jax.Array | None
  first_row: int
  slab_rows: np.ndarray
  slab_starts: np.ndarray

  @property
  def rows(self) -> int:
    """The number of rows the part holds entries of (consecutive, from ``first_row``)."""
    return int(self.slab_rows[-1]) - self.first_row + 1

  def per_slab(self, per_row: jax.Array) -> jax.Array:
    """A value for each row of the selection, broadcast against ``values``.

    Args:
      per_row: ``(rows of the selection,)``, such as each row's threshold.

    Returns:
      A scalar where the part holds one row, else ``(slabs, 1)``: each slab's row's value.
    """
    return per_row[self.first_row] if self.rows == 1 else per_row[self.slab_rows][:, None]


def _tiles(leaves: Sequence[jax.Array], rows: Sequence[int], offsets: Sequence[int]) -> _Part:
  """Copies small leaves into one part of equal tiles, a tile a slab.

  Each leaf is flattened and zero-padded to whole tiles, so a tile never holds two leaves. The
  tiles are as wide as the largest leaf rounded up to a power of two, between ``_CHUNK`` and
  ``_TILE_WIDTH`` entries.

  Args:
    leaves: the leaves, in row order.
    rows: ``rows[i]`` is the row of ``leaves[i]``.
    offsets: ``offsets[i]`` is the flat index, within its row, of the first entry of ``leaves[i]``.

  Returns:
    The part, with ``valid`` False on the padding (None where there is none).
  """
  width = max(_CHUNK, min(_TILE_WIDTH, 1 << int(max(a.size for a in leaves) - 1).bit_length()))
  flat, slab_rows, starts, filled = [], [], [], []
  for leaf, row, offset in zip(leaves, rows, offsets, strict=True):
    first = np.arange(0, leaf.size, width, dtype=np.int32)  # each tile's first entry in the leaf
    flat.append(jnp.pad(leaf.reshape(-1), (0, len(first) * width - leaf.size)))
    slab_rows.append(np.full(len(first), row, np.int32))
    starts.append(offset + first)
    filled.append(np.minimum(leaf.size - first, width))
  fill = np.concatenate(filled)[:, None]
  index = jax.lax.broadcasted_iota(jnp.int32, (len(fill), width), 1)
  valid = None if fill.min() == width else index < fill
  values = jnp.concatenate(flat).reshape(-1, width)
  return _Part(values, valid, rows[0], np.concatenate(slab_rows), np.concatenate(starts))


def _own_part(leaf: jax.Array, row: int, offset: int, layout: _Layout) -> _Part:
  """One leaf as a part of its own, copying nothing.

  Under ``_Layout.OWN_SHAPE`` the part is the leaf itself, its slabs the runs along its last axis;
  under ``_Layout.PACKED`` it is a ``(slabs, width)`` reshape, the width the largest power of two
  up to ``_TILE_WIDTH`` that divides the leaf's size.
  """
  own_shape = layout is _Layout.OWN_SHAPE
  width = (leaf.shape[-1] if leaf.ndim else 1) if own_shape else math.gcd(leaf.size, _TILE_WIDTH)
  slabs, starts = leaf.size // width, offset + width * np.arange(leaf.size // width, dtype=np.int32)
  values = leaf if own_shape else leaf.reshape(slabs, width)
  return _Part(values, None, row, np.full(slabs, row, np.int32), starts)


def _viewed(leaf: jax.Array) -> bool:
  """Whether a leaf on one device is a part of its own rather than copied into tiles.

  It is where it is large (at least ``_OWN_PART_SIZE`` entries) and its size has a factor of
  ``_CHUNK``, so that its view's slabs are whole chunks.
  """
  return leaf.size >= _OWN_PART_SIZE and math.gcd(leaf.size, _TILE_WIDTH) >= _CHUNK


def _digit_bits(rows_in_a_scatter: int, row_size: int, layout: _Layout) -> int:
  """The widest digit a selection's histogram passes may take, in bits.

  The ``rows * 2**bits`` counters of one scatter stay within ``2**_MAX_COUNTER_BITS``. Under
  ``_Layout.OWN_SHAPE`` the counters are all-reduced across devices, so there are also at most a
  16th as many as a row has entries. The result is clipped to ``_MIN_DIGIT_BITS`` to
  ``_MAX_DIGIT_BITS``.
  """
  bits = _MAX_COUNTER_BITS - int(rows_in_a_scatter - 1).bit_length()
  if layout is _Layout.OWN_SHAPE:
    bits = min(bits, int(row_size - 1).bit_length() - 4)
  return max(_MIN_DIGIT_BITS, min(_MAX_DIGIT_BITS, bits))


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """The row-major flat index of each entry of ``shape`` (int32), built in that shape.

  One iota per axis and no reshape, so that it lines up with a leaf of that shape however the
  leaf is laid out or sharded.
  """
  index = jnp.zeros(shape, jnp.int32)
  for axis in range(len(shape)):
    index = index + jax.lax.broadcasted_iota(jnp.int32, shape, axis) * math.prod(shape[axis + 1 :])
  return index


def _magnitude_keys(x: jax.Array) -> jax.Array:
  """Unsigned integers that order as ``|x|`` does, in x's shape.

  The bits of ``|x|`` (sign bit clear) as an unsigned integer of x's width.
  """
  return jax.lax.bitcast_convert_type(jnp.abs(x), _KEY_DTYPES[jnp.dtype(x.dtype).itemsize])


def _count(index: jax.Array, counts: jax.Array, counters: int, drop: bool = False) -> jax.Array:
  """Adds each of ``counts`` to the int32 counter its ``index`` names: one scatter-add.

  Devices count their shards; the counters are then all-reduced.

  Args:
    index: the counter of each entry, in ``[0, counters)``, or ``counters`` where ``drop``.
    counts: shaped as ``index``, the amount each entry adds.
    counters: the number of counters.
    drop: whether an index of ``counters`` (out of bounds) is dropped; else every index must be
      in bounds.

  Returns:
    ``(counters,)`` int32 counts.
  """
  dimensions = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
  )
  modes = jax.lax.GatherScatterMode
  mode = modes.FILL_OR_DROP if drop else modes.PROMISE_IN_BOUNDS
  zeros = jnp.zeros((counters,), jnp.int32)
  return jax.lax.scatter_add(zeros, index[..., None], counts, dimensions, mode=mode)


def _by_row(blocks: Sequence[tuple[int, jax.Array]]) -> jax.Array:
  """The parts' blocks of rows as one array over all rows of the selection.

  Args:
    blocks: ``(first_row, block)`` for each part, ``block`` having one leading entry per row of
      the part; a row held by several parts has its blocks added up.

  Returns:
    The blocks of the rows in row order, concatenated along the leading axis.
  """
  summed: dict[int, jax.Array] = {}
  for row, block in blocks:
    summed[row] = summed[row] + block if row in summed else block
  return jnp.concatenate([summed[row] for row in sorted(summed)])


def _choose_digit(hist: jax.Array, need: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each row's next digit of the threshold: the largest digit with ``need`` entries at or above.

  With ``at_least[c] = hist[c] + hist[c + 1] + ...``, the digit ``c`` of a row is the largest
  with ``at_least[c] >= need``. Suffix sums are taken over groups of bins, then within the chosen
  group only: one over all 2**16 bins costs more on CPU than the rest of the choice (XLA lowers it
  as a tree of windowed reductions).

  Args:
    hist: ``(rows, bins)`` int32 histograms, ``bins`` a power of two.
    need: ``(rows,)``, at least 1 and at most the row's total.

  Returns:
    ``(digit, ties, above)``, each ``(rows,)``: the digit, ``hist[digit]`` and
    ``at_least[digit + 1]`` (the entries of larger digits).
  """
  rows, bins = hist.shape
  group = 1 << ((bins.bit_length() - 1) // 2)
  grouped = hist.reshape(rows, bins // group, group)
  group_totals = jnp.sum(grouped, axis=2, dtype=jnp.int32)
  group_at_least = jax.lax.cumsum(group_totals, axis=1, reverse=True)
  chosen_group = jnp.sum(group_at_least >= need[:, None], axis=1, dtype=jnp.int32) - 1
  above_group = jnp.take_along_axis(group_at_least - group_totals, chosen_group[:, None], axis=1)
  within = jnp.take_along_axis(grouped, chosen_group[:, None, None], axis=1)[:, 0]
  at_least = jax.lax.cumsum(within, axis=1, reverse=True) + above_group
  chosen = jnp.sum(at_least >= need[:, None], axis=1, dtype=jnp.int32) - 1
  ties = jnp.take_along_axis(within, chosen[:, None], axis=1)[:, 0]
  above = jnp.take_along_axis(at_least, chosen[:, None], axis=1)[:, 0] - ties
  return chosen_group * group + chosen, ties, above


def _radix_select(
  parts: Sequence[_Part], keys: Sequence[jax.Array], need: jax.Array, key_bits: int, digit_bits: int
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Each row's ``need``-th largest key, by histograms of digits from the top (see above).

  Padding (key 0, so digit 0 in every pass) may be among the keys equal to the result, never
  among the others, as a row's valid entries alone reach ``need``.

  Args:
    parts: the ``_Part`` s of the selection, in row order.
    keys: ``_magnitude_keys`` of each part's values.
    need: ``(rows,)`` int32, each at least 1 and at most the row's size.
    key_bits: the key's bits that are counted (the low ones; the rest must be 0).
    digit_bits: the widest digit; the passes share the bits as evenly as they can.

  Returns:
    ``(threshold, need, ties)``, each ``(rows,)``: the key sought, how many keys equal to it are
    among the ``need`` largest, and how many equal it (padding included).
  """
  prefix = jnp.zeros(need.shape, keys[0].dtype)
  passes = -(-key_bits // digit_bits)
  shift = key_bits
  for width in [key_bits // passes + (i < key_bits % passes) for i in range(passes)]:
    shift -= width
    bins = 1 << width
    blocks = []
    for part, key in zip(parts, keys, strict=True):
      # Entries outside the prefix chosen so far go to counter `counters`, which is dropped.
      # 16-bit indices, where they fit, make a pass ~1.6x faster on CPU (a part-sized temporary).
      counters, drop = part.rows * bins, shift + width < key_bits
      index_dtype = jnp.uint16 if counters + drop <= 1 << 16 else jnp.int32
      digit = ((key >> shift) & (bins - 1)).astype(index_dtype)
      if part.rows > 1:  # each row's counters follow the previous row's
        digit = digit + ((part.slab_rows - part.first_row) * bins).astype(index_dtype)[:, None]
      if drop:
        in_prefix = (key >> (shift + width)) == part.per_slab(prefix)
        digit = jnp.where(in_prefix, digit, jnp.asarray(counters, index_dtype))
      counts = _count(digit, jnp.ones(digit.shape, jnp.int32), counters, drop)
      blocks.append((part.first_row, counts.reshape(part.rows, bins)))
    chosen, ties, above = _choose_digit(_by_row(blocks), need)
    need = need - above
    prefix = (prefix << width) | chosen.astype(prefix.dtype)
  return prefix, need, ties


def _count_slabs(flags: jax.Array, layout: _Layout) -> jax.Array:
  """The number of True ``flags`` in each slab (each index of the leading axes), flattened."""
  width = flags.shape[-1]
  if layout is _Layout.OWN_SHAPE:  # into counters, all-reduced: sharded counts would be gathered
    by_slab = jnp.sum(flags, axis=-1, dtype=jnp.int32)
    return _count(_flat_index(by_slab.shape), by_slab, by_slab.size)
  # uint8 sums over chunks of 32 vectorize on XLA's CPU backend; int32 sums of rows do not.
  chunks = jnp.sum(flags.reshape(-1, width // _CHUNK, _CHUNK), axis=2, dtype=jnp.uint8)
  return jnp.sum(chunks, axis=1, dtype=jnp.int32)


def _last_kept_tie(
  parts: Sequence[_Part],
  tied: Sequence[jax.Array],
  need: jax.Array,
  ties: jax.Array,
  layout: _Layout,
) -> jax.Array:
  """Each row's last tied entry kept: the flat index of its ``need``-th, in flat order.

  Per-slab counts of the tied entries locate the slab that holds it, and a running sum over that
  slab's flags its position there (see the tie cut above).

  Args:
    parts: the ``_Part`` s of the selection, in row order.
    tied: for each part, shaped as its values, True on the valid entries equal to the threshold.
    need: ``(rows,)``, how many tied entries each row keeps, at least 1.
    ties: ``(rows,)``, at least ``need``; where equal, the row keeps all its ties.
    layout: how the parts lay out the leaves.

  Returns:
    ``(rows,)`` int32 flat indices, the largest int32 where a row keeps all its ties.
  """
  slab_counts, shared = [], len(parts) > len({part.first_row for part in parts})
  for part, flags in zip(parts, tied, strict=True):
    count = functools.partial(_count_slabs, layout=layout)
    if not shared and len(parts) > 1:  # a part a row: only the rows that cut a tie are counted
      row, none = part.first_row, lambda f: jnp.zeros(math.prod(f.shape[:-1]), jnp.int32)
      count = functools.partial(jax.lax.cond, need[row] < ties[row], count, none)
    slab_counts.append(count(flags).reshape(-1))
  slab_rows = np.concatenate([part.slab_rows for part in parts])
  starts = np.concatenate([part.slab_starts for part in parts])
  order = np.lexsort((starts, slab_rows))  # every slab of the selection, by row, then flat index
  slab_rows, starts = slab_rows[order], starts[order]
  counts = jnp.concatenate(slab_counts)[order]
  # Tied entries up to each slab's end within its row: the slab where that reaches `need` holds
  # the entry sought (in each row that cuts a tie; the others keep all their ties, below).
  through = jnp.cumsum(counts)
  before_row = jnp.concatenate([jnp.zeros((1,), jnp.int32), through])
  within = through - before_row[np.searchsorted(slab_rows, slab_rows)]
  crossing = (within >= need[slab_rows]) & (within - counts < need[slab_rows])
  slab_index = jnp.arange(len(order), dtype=jnp.int32)
  hit = jnp.zeros(need.shape, jnp.int32).at[slab_rows].max(jnp.where(crossing, slab_index, 0))
  # The tied flags of each row's hit slab, from the part that holds it (zeros from the others).
  part_ends = np.cumsum([len(part.slab_rows) for part in parts])
  hit_slab = jnp.asarray(order)[hit]  # each row's hit slab, numbered as the parts list them
  longest = max(flags.shape[-1] for flags in tied)
  blocks = []
  for part, flags, end in zip(parts, tied, part_ends, strict=True):
    begin = end - len(part.slab_rows)
    rows = slice(part.first_row, part.first_row + part.rows)
    local = hit_slab[rows] - begin  # the hit slab's index within the part
    if layout is _Layout.OWN_SHAPE:  # counted: a gather of one slab might gather the whole leaf
      in_slab = _flat_index(flags.shape[:-1])[..., None] == local[0]
      by_entry = jnp.sum(flags & in_slab, axis=tuple(range(flags.ndim - 1)), dtype=jnp.int32)
      slab = _count(jnp.arange(by_entry.size), by_entry, by_entry.size)[None]
    else:
      slab = flags[local].astype(jnp.int32)
    if shared:
      slab = jnp.where(((local >= 0) & (local < end - begin))[:, None], slab, 0)
    blocks.append((part.first_row, jnp.pad(slab, ((0, 0), (0, longest - slab.shape[1])))))
  # The position in the hit slab where its running sum of flags reaches the ties still needed
  # there (`need` less the ties of the row's earlier slabs).
  running = jnp.cumsum(_by_row(blocks), axis=1)
  position = jnp.sum(running < (need - within[hit] + counts[hit])[:, None], axis=1, dtype=jnp.int32)
  return jnp.where(need < ties, jnp.asarray(starts)[hit] + position, jnp.iinfo(jnp.int32).max)


def _select(
  leaves: Sequence[jax.Array],
  rows: Sequence[int],
  offsets: Sequence[int],
  ks: Sequence[int],
  layout: _Layout,
) -> list[jax.Array]:
  """Each leaf with all but the entries among its row's ``ks[row]`` largest magnitudes zeroed.

  Args:
    leaves: leaves of one float dtype, in row order.
    rows: ``rows[i]`` is the row of ``leaves[i]``; rows are numbered from 0.
    offsets: ``offsets[i]`` is the flat index, within its row, of the first entry of
      ``leaves[i]``: of tied entries, the lower flat index is kept.
    ks: ``ks[row]``, at least 1 and less than the row's size.
    layout: how the leaves are counted; ``_Layout.OWN_SHAPE`` counts every leaf in its own
      shape, where it may be split across devices.

  Returns:
    The leaves with the entries not kept zeroed, in their shapes, dtypes and shardings.
  """
  shardings = [jax.typeof(leaf).sharding for leaf in leaves]
  own_shape = layout is _Layout.OWN_SHAPE
  mesh = next((s.mesh for s in shardings if own_shape and not s.mesh.empty), None)
  if mesh is not None and AxisType.Explicit in mesh.axis_types:
    # The scatters have no sharding rule under explicit axes. Under `auto_axes` the partitioner
    # places them (local counts, all-reduced counters); the results come back sharded as given.
    select = lambda ls: _select(ls, rows, offsets, ks, layout)
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.sharding.auto_axes(select, out_sharding=[s.spec for s in shardings])(leaves)
  parts, small = [], []
  for i, (leaf, row, offset) in enumerate(zip(leaves, rows, offsets, strict=True)):
    if own_shape or _viewed(leaf):
      parts.append(_own_part(leaf, row, offset, layout))
    else:
      small.append(i)
  if small:
    parts.append(
      _tiles([leaves[i] for i in small], [rows[i] for i in small], [offsets[i] for i in small])
    )
  parts.sort(key=lambda part: part.first_row)
  keys = [_magnitude_keys(part.values) for part in parts]
  key_bits = 8 * jnp.dtype(keys[0].dtype).itemsize - 1  # all but the sign bit
  row_sizes = np.bincount(rows, weights=[leaf.size for leaf in leaves])
  bits = min(_digit_bits(p.rows, int(row_sizes[p.first_row]), layout) for p in parts)
  threshold, need, ties = _radix_select(parts, keys, jnp.asarray(ks, jnp.int32), key_bits, bits)
  valid = [True if part.valid is None else part.valid for part in parts]
  tied = [(k == p.per_slab(threshold)) & v for p, k, v in zip(parts, keys, valid, strict=True)]
  # Ties are cut only where a row keeps fewer of them than it has (run always: a 1.1x slower top-k
  # step on the ResNet-50 tree, 1.3x under FSDP). The flags, not the keys, are the operand: a leaf
  # captured by a conditional is no longer updated in place.
  cut = lambda tied: _last_kept_tie(parts, tied, need, ties, layout)
  keep_all = lambda tied: jnp.full(need.shape, jnp.iinfo(jnp.int32).max, jnp.int32)
  last = jax.lax.cond(jnp.any(need < ties), cut, keep_all, tied)
  out = []
  for leaf, row, offset in zip(leaves, rows, offsets, strict=True):
    # In the leaf's own shape: XLA sees an elementwise function of it and may write in place.
    key = _magnitude_keys(leaf)
    before_cut = _flat_index(leaf.shape) <= last[row] - offset
    kept = (key > threshold[row]) | ((key == threshold[row]) & before_cut)
    out.append(jnp.where(kept, leaf, jnp.zeros_like(leaf)))
  return out


def _may_be_split(x: jax.Array) -> bool:
  """Whether ``x`` may be split across devices, and so is selected in its own shape.

  It may be on a mesh of several devices, if its spec names an axis or the mesh has ``Auto`` axes
  (a trace does not see how those split it); it is not on one device, replicated over explicit
  axes, or local to a ``shard_map`` body.
  """
  sharding = jax.typeof(x).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or mesh.size <= 1:
    return False
  kinds = zip(mesh.axis_types, mesh.axis_sizes, strict=True)
  auto = any(kind == AxisType.Auto and size > 1 for kind, size in kinds)
  return auto or any(axis is not None for axis in sharding.spec)


def keep_top_k(x: jax.Array, k: int) -> jax.Array:
  """``x`` with all but its ``k`` largest-magnitude entries zeroed.

  Exactly ``min(k, x.size)`` entries survive, ties in magnitude going to the lower flat index (a
  stable sort's order). ``k`` is a Python int (static).
  """
  return keep_top_k_leaves([x], [k])[0]


def keep_top_k_leaves(leaves: Sequence[jax.Array], ks: Sequence[int]) -> list[jax.Array]:
  """Keeps the ``ks[i]`` largest-magnitude entries of each ``leaves[i]``, zeroing the rest.

  Leaves of one dtype width, layout and digit width are selected together, a row each: on one
  device the small ones are copied into one tiled part (one scatter a pass for all of them) and
  the large ones each viewed in place.
  """
  if len(leaves) != len(ks):
    raise ValueError(f"Got {len(leaves)} leaves but {len(ks)} values of k.")
  out = [jnp.zeros_like(leaf) if int(k) <= 0 else leaf for leaf, k in zip(leaves, ks, strict=True)]
  groups: dict[tuple[int, _Layout, int], list[int]] = {}
  for i, (leaf, k) in enumerate(zip(leaves, ks, strict=True)):
    if 0 < int(k) < leaf.size:
      layout = _Layout.of([leaf])
      own = layout is _Layout.OWN_SHAPE or _viewed(leaf)
      bits = _digit_bits(1, leaf.size, layout) if own else -1  # the tiles' bits depend on them all
      groups.setdefault((jnp.dtype(leaf.dtype).itemsize, layout, bits), []).append(i)
  for (_, layout, _), members in groups.items():
    n, member_ks = len(members), [int(ks[i]) for i in members]
    kept = _select([leaves[i] for i in members], list(range(n)), [0] * n, member_ks, layout)
    for i, leaf in zip(members, kept, strict=True):
      out[i] = leaf
  return out


def keep_top_k_global(leaves: Sequence[jax.Array], k: int) -> list[jax.Array]:
  """Keeps the ``k`` largest-magnitude entries across all leaves together, zeroing the rest.

  The magnitudes are compared in the leaves' common dtype; ties go to the earlier leaf, then to
  the lower flat index (a stable sort's order over the leaves' flattened concatenation).
  """
  k = int(k)
  if not leaves or k >= sum(leaf.size for leaf in leaves):
    return list(leaves)
  if k <= 0:
    return [jnp.zeros_like(leaf) for leaf in leaves]
  dtypes = {jnp.dtype(leaf.dtype) for leaf in leaves}
  common = max(dtypes, key=lambda d: d.itemsize)
  if len(dtypes) > 1 and common.itemsize == 2:  # bfloat16 with float16: neither holds the other
    common = jnp.dtype(jnp.float32)
  offsets = np.cumsum([0] + [leaf.size for leaf in leaves[:-1]]).tolist()
  layout = _Layout.of(leaves)
  kept = _select([leaf.astype(common) for leaf in leaves], [0] * len(leaves), offsets, [k], layout)
  return [kept_leaf.astype(leaf.dtype) for kept_leaf, leaf in zip(kept, leaves, strict=True)]
