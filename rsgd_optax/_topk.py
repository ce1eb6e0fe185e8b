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
    return int(self.slab_rows[-1]) - self.first_row + 1

  def per_slab(self, per_row: jax.Array) -> jax.Array:
    """``per_row`` (a value for each row of the selection) broadcast against ``values``."""
    return per_row[self.first_row] if self.rows == 1 else per_row[self.slab_rows][:, None]


def _tiles(leaves: Sequence[jax.Array], rows: Sequence[int], offsets: Sequence[int]) -> _Part:
  """Copies ``leaves`` (row ``rows[i]``, first flat index ``offsets[i]``) into one tiled part."""
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


def _own_part(leaf: jax.Array, row: int, offset: int, split: bool) -> _Part:
  """``leaf`` as a part of its own: in its own shape if ``split``, else as a free 2-D view."""
  width = (leaf.shape[-1] if leaf.ndim else 1) if split else math.gcd(leaf.size, _TILE_WIDTH)
  slabs, starts = leaf.size // width, offset + width * np.arange(leaf.size // width, dtype=np.int32)
  values = leaf if split else leaf.reshape(slabs, width)
  return _Part(values, None, row, np.full(slabs, row, np.int32), starts)


def _viewed(leaf: jax.Array) -> bool:
  """Whether a leaf on one device is counted as a view of itself (slabs of 32 entries or more)."""
  return leaf.size >= _OWN_PART_SIZE and math.gcd(leaf.size, _TILE_WIDTH) >= _CHUNK


def _digit_bits(rows_in_a_scatter: int, row_size: int, split: bool) -> int:
  """The widest digit: counters of a scatter fit a cache; a split leaf's, a 16th of its entries."""
  bits = _MAX_COUNTER_BITS - int(rows_in_a_scatter - 1).bit_length()
  if split:
    bits = min(bits, int(row_size - 1).bit_length() - 4)
  return max(_MIN_DIGIT_BITS, min(_MAX_DIGIT_BITS, bits))


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """The row-major flat index of each entry of ``shape`` (int32), built in that shape."""
  index = jnp.zeros(shape, jnp.int32)
  for axis in range(len(shape)):
    index = index + jax.lax.broadcasted_iota(jnp.int32, shape, axis) * math.prod(shape[axis + 1 :])
  return index


def _magnitude_keys(x: jax.Array) -> jax.Array:
  """Unsigned integers ordered as ``|x|`` is (the bits of ``|x|``, sign bit clear), in x's shape."""
  return jax.lax.bitcast_convert_type(jnp.abs(x), _KEY_DTYPES[jnp.dtype(x.dtype).itemsize])


def _count(index: jax.Array, counts: jax.Array, counters: int, drop: bool = False) -> jax.Array:
  """``counters`` int32 counters, each ``counts`` entry added to the one its ``index`` names (none
  where ``drop`` and it names ``counters``). Devices count their shards; counters are all-reduced."""
  dimensions = jax.lax.ScatterDimensionNumbers(
    update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
  )
  modes = jax.lax.GatherScatterMode
  mode = modes.FILL_OR_DROP if drop else modes.PROMISE_IN_BOUNDS
  zeros = jnp.zeros((counters,), jnp.int32)
  return jax.lax.scatter_add(zeros, index[..., None], counts, dimensions, mode=mode)


def _by_row(blocks: Sequence[tuple[int, jax.Array]]) -> jax.Array:
  """The parts' ``(first_row, block)`` as one array of all rows (a row's blocks added up)."""
  summed: dict[int, jax.Array] = {}
  for row, block in blocks:
    summed[row] = summed[row] + block if row in summed else block
  return jnp.concatenate([summed[row] for row in sorted(summed)])


def _choose_digit(hist: jax.Array, need: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per row of ``hist`` (rows, bins), the largest digit with at least ``need`` entries at or
  above it, its count, and the count of larger digits. Suffix sums are taken over groups of bins,
  then within the chosen group only: one over all 2**16 bins costs more on CPU than the rest of the
  choice (XLA lowers it as a tree of windowed reductions)."""
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


def _radix_select(parts, keys, need: jax.Array, key_bits: int, digit_bits: int):
  """Per row, the ``need``-th largest key of its parts' valid entries (``need`` >= 1), how many
  equal to it are among the ``need`` largest, and how many equal it (padding may be among these,
  never the others: padding is key 0, in digit 0, and a row's valid entries alone reach ``need``)."""
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
      if part.rows > 1:
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


def _count_slabs(flags: jax.Array, split: bool) -> jax.Array:
  """The number of True ``flags`` in each slab (each index of the leading axes), flattened."""
  width = flags.shape[-1]
  if split:  # into counters, all-reduced: sharded counts would be gathered to be reshaped
    by_slab = jnp.sum(flags, axis=-1, dtype=jnp.int32)
    return _count(_flat_index(by_slab.shape), by_slab, by_slab.size)
  # uint8 sums over chunks of 32 vectorize on XLA's CPU backend; int32 sums of rows do not.
  chunks = jnp.sum(flags.reshape(-1, width // _CHUNK, _CHUNK), axis=2, dtype=jnp.uint8)
  return jnp.sum(chunks, axis=1, dtype=jnp.int32)


def _last_kept_tie(parts, tied, need: jax.Array, ties: jax.Array, split: bool) -> jax.Array:
  """Per row, the flat index of its ``need``-th ``tied`` entry in flat order, or the largest
  int32 where it keeps all its ``ties`` (``split``: the parts are leaves that may be split across
  devices, in their own shapes)."""
  slab_counts, shared = [], len(parts) > len({part.first_row for part in parts})
  for part, flags in zip(parts, tied, strict=True):
    count = functools.partial(_count_slabs, split=split)
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
    if split:  # counted: a gather of one slab might gather the leaf across devices
      in_slab = _flat_index(flags.shape[:-1])[..., None] == local[0]
      by_entry = jnp.sum(flags & in_slab, axis=tuple(range(flags.ndim - 1)), dtype=jnp.int32)
      slab = _count(jnp.arange(by_entry.size), by_entry, by_entry.size)[None]
    else:
      slab = flags[local].astype(jnp.int32)
    if shared:
      slab = jnp.where(((local >= 0) & (local < end - begin))[:, None], slab, 0)
    blocks.append((part.first_row, jnp.pad(slab, ((0, 0), (0, longest - slab.shape[1])))))
  running = jnp.cumsum(_by_row(blocks), axis=1)
  position = jnp.sum(running < (need - within[hit] + counts[hit])[:, None], axis=1, dtype=jnp.int32)
  return jnp.where(need < ties, jnp.asarray(starts)[hit] + position, jnp.iinfo(jnp.int32).max)


def _select(leaves, rows: Sequence[int], offsets: Sequence[int], ks: Sequence[int], split: bool):
  """Each leaf with all but the entries among its row's ``ks[row]`` largest magnitudes zeroed.
  ``leaves`` share one float dtype and come in row order; ``offsets[i]`` is leaf ``i``'s first flat
  index within its row (ties go to the lower one). ``split`` counts every leaf in its own shape."""
  shardings = [jax.typeof(leaf).sharding for leaf in leaves]
  mesh = next((s.mesh for s in shardings if split and not s.mesh.empty), None)
  if mesh is not None and AxisType.Explicit in mesh.axis_types:
    # The scatters have no sharding rule under explicit axes. Under `auto_axes` the partitioner
    # places them (local counts, all-reduced counters); the results come back sharded as given.
    select = lambda ls: _select(ls, rows, offsets, ks, split)
    with jax.sharding.use_abstract_mesh(mesh):
      return jax.sharding.auto_axes(select, out_sharding=[s.spec for s in shardings])(leaves)
  parts, small = [], []
  for i, (leaf, row, offset) in enumerate(zip(leaves, rows, offsets, strict=True)):
    if split or _viewed(leaf):
      parts.append(_own_part(leaf, row, offset, split))
    else:
      small.append(i)
  if small:
    parts.append(
      _tiles([leaves[i] for i in small], [rows[i] for i in small], [offsets[i] for i in small])
    )
  parts.sort(key=lambda part: part.first_row)
  keys = [_magnitude_keys(part.values) for part in parts]
  key_bits = 8 * jnp.dtype(keys[0].dtype).itemsize - 1
  row_sizes = np.bincount(rows, weights=[leaf.size for leaf in leaves])
  bits = min(_digit_bits(p.rows, int(row_sizes[p.first_row]), split) for p in parts)
  threshold, need, ties = _radix_select(parts, keys, jnp.asarray(ks, jnp.int32), key_bits, bits)
  valid = [True if part.valid is None else part.valid for part in parts]
  tied = [(k == p.per_slab(threshold)) & v for p, k, v in zip(parts, keys, valid, strict=True)]
  # Ties are cut only where a row keeps fewer of them than it has (run always: a 1.1x slower top-k
  # step on the ResNet-50 tree, 1.3x under FSDP). The flags, not the keys, are the operand: a leaf
  # captured by a conditional is no longer updated in place.
  cut = lambda tied: _last_kept_tie(parts, tied, need, ties, split)
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
  """Whether ``x`` may be split across devices (so is selected in its own shape): on a mesh of
  several devices, if its spec names an axis or the mesh has ``Auto`` axes (unseen by a trace); not
  on one device, replicated over explicit axes, or local to a ``shard_map`` body."""
  sharding = jax.typeof(x).sharding
  mesh = getattr(sharding, "mesh", None)
  if mesh is None or mesh.empty or mesh.size <= 1:
    return False
  kinds = zip(mesh.axis_types, mesh.axis_sizes, strict=True)
  auto = any(kind == AxisType.Auto and size > 1 for kind, size in kinds)
  return auto or any(axis is not None for axis in sharding.spec)


def keep_top_k(x: jax.Array, k: int) -> jax.Array:
  """``x`` with all but its ``k`` largest-magnitude entries zeroed: exactly ``min(k, x.size)``
  survive, ties in magnitude going to the lower flat index. ``k`` is a Python int (static)."""
  return keep_top_k_leaves([x], [k])[0]


def keep_top_k_leaves(leaves: Sequence[jax.Array], ks: Sequence[int]) -> list[jax.Array]:
  """Keeps the ``ks[i]`` largest-magnitude entries of each ``leaves[i]``, zeroing the rest. Leaves
  of one dtype width and digit width are selected together: the small ones copied into one tiled
  part (one scatter a pass for all of them), the large ones each viewed in place."""
  if len(leaves) != len(ks):
    raise ValueError(f"Got {len(leaves)} leaves but {len(ks)} values of k.")
  out = [jnp.zeros_like(leaf) if int(k) <= 0 else leaf for leaf, k in zip(leaves, ks, strict=True)]
  groups: dict[tuple[int, bool, int], list[int]] = {}
  for i, (leaf, k) in enumerate(zip(leaves, ks, strict=True)):
    if 0 < int(k) < leaf.size:
      split = _may_be_split(leaf)
      bits = _digit_bits(1, leaf.size, split) if split or _viewed(leaf) else -1
      groups.setdefault((jnp.dtype(leaf.dtype).itemsize, split, bits), []).append(i)
  for (_, split, _), members in groups.items():
    n, member_ks = len(members), [int(ks[i]) for i in members]
    kept = _select([leaves[i] for i in members], list(range(n)), [0] * n, member_ks, split)
    for i, leaf in zip(members, kept, strict=True):
      out[i] = leaf
  return out


def keep_top_k_global(leaves: Sequence[jax.Array], k: int) -> list[jax.Array]:
  """Keeps the ``k`` largest-magnitude entries across all leaves together, compared in the leaves'
  common dtype; ties go to the earlier leaf, then to the lower flat index (a stable sort's order)."""
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
  split = any(_may_be_split(leaf) for leaf in leaves)
  kept = _select([leaf.astype(common) for leaf in leaves], [0] * len(leaves), offsets, [k], split)
  return [kept_leaf.astype(leaf.dtype) for kept_leaf, leaf in zip(kept, leaves, strict=True)]
