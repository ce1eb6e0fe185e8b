"""Exact top-k magnitude selection used by the top-k residual scheme.

:func:`jax.lax.top_k` sorts the whole array on CPU and GPU, which makes a top-k residual step many
times dearer than the base optimizer's. Here the selection is a radix select instead, on one
composite key per entry: the magnitude's bits (with the sign bit cleared, a float's bits read as an
unsigned integer order the same way as its magnitude), then the entry's reversed flat index
(``span - 1 - index``, larger for lower indices). Composite keys are distinct, and ordering by them
is ordering by descending magnitude with ties going to the lower flat index: a stable sort's order.

Each pass of the select reads one digit of the composite key, most significant first, of the
entries whose higher digits equal the digits chosen so far, counts them in a histogram, and chooses
the digit below which the row's ``k``-th largest key lies. The loop stops as soon as every row keeps
all of the entries that match its chosen digits (``need == ties``): for distinct float magnitudes,
after the magnitude's passes; the index passes run only when a row must cut a tie. Every entry whose
decided digits are at least the chosen ones is kept: exactly ``k`` per row, the set a stable sort by
descending magnitude (or :func:`jax.lax.top_k`) keeps.

One engine serves every case. A row is one leaf (per-leaf selection) or several leaves (global,
``per_leaf=False``, each with its flat offset). Every array stays in its own shape: its digits are
scattered, in place, into a few counters of its own, summed per row. On a mesh the partitioner then
counts each shard where it lies and all-reduces only the counters, so nothing leaf-sized is gathered
or reshaped across devices, and the kept set is the same as on one device. The passes are a
``lax.while_loop``: each array appears once in the compiled program however many passes run, which
keeps the compile time of a step over a model's ~160 leaves close to the base optimizer's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType

# Digit widths: narrower than 8 bits is slow on CPU (entries pile up on the same counter); 16 bits
# take a float32 magnitude in two passes. A selection of n entries uses about log2(n) - 4 bits, so
# its counters (2**bits) stay about a sixteenth of its entries: small leaves do not pay for 2**16.
_MIN_DIGIT_BITS = 8
_MAX_DIGIT_BITS = 16

# Histogram counters are a flat vector; each entry adds 1 to the counter its index names.
_HISTOGRAM_SCATTER = jax.lax.ScatterDimensionNumbers(
  update_window_dims=(), inserted_window_dims=(0,), scatter_dims_to_operand_dims=(0,)
)

_KEY_DTYPES = {2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint64}


def _digit_bits(size: int) -> int:
  """The one digit-width rule: the width of every digit of a selection over ``size`` entries."""
  return max(_MIN_DIGIT_BITS, min(_MAX_DIGIT_BITS, int(size - 1).bit_length() - 4))


def _magnitude_keys(x: jax.Array) -> jax.Array:
  """Unsigned integers ordered as ``|x|`` is (the bits of ``|x|``, sign bit clear), in x's shape."""
  return jax.lax.bitcast_convert_type(jnp.abs(x), _KEY_DTYPES[jnp.dtype(x.dtype).itemsize])


def _reversed_flat_index(shape: tuple[int, ...], offset: int, span: int) -> jax.Array:
  """``span - 1 - (offset + flat index)`` of each entry of ``shape``, built in that shape (uint32).

  The one flat-index builder: one iota per axis, so that nothing is reshaped (a reshape of a
  sharded leaf would gather it).
  """
  index = jnp.full(shape, span - 1 - offset, jnp.int32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index - jax.lax.broadcasted_iota(jnp.int32, shape, axis) * stride
    stride *= shape[axis]
  return index.astype(jnp.uint32)


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
  group_at_least = jax.lax.cumsum(group_totals, axis=1, reverse=True)
  chosen_group = jnp.sum(group_at_least >= need[:, None], axis=1, dtype=jnp.int32) - 1
  above_group = jnp.take_along_axis(group_at_least - group_totals, chosen_group[:, None], axis=1)
  within = jnp.take_along_axis(grouped, chosen_group[:, None, None], axis=1)[:, 0]
  at_least = jax.lax.cumsum(within, axis=1, reverse=True) + above_group
  chosen = jnp.sum(at_least >= need[:, None], axis=1, dtype=jnp.int32) - 1
  ties = jnp.take_along_axis(within, chosen[:, None], axis=1)[:, 0]
  above = jnp.take_along_axis(at_least, chosen[:, None], axis=1)[:, 0] - ties
  return chosen_group * group + chosen, ties, above


class _Passes(NamedTuple):
  """The static plan of a select's passes, one entry per pass (numpy, indexed by the pass number).

  The composite key of an entry is its magnitude key, ``key_passes * width`` bits (its top bits
  zero), then its reversed flat index, ``index_passes * width`` bits. Pass ``p`` reads one
  ``width``-bit digit of it, from the magnitude key for the first ``key_passes`` passes and from
  the index after.

  Attributes:
    from_index: ``(passes,)`` bool, True where the pass's digit comes from the index.
    shift: ``(passes,)`` the right shift that brings the pass's digit to the low bits of its word.
    key_mask: ``(passes + 1,)`` the magnitude bits decided before pass ``p`` (all after the last).
    index_mask: ``(passes + 1,)`` likewise, the index bits decided before pass ``p``.
  """

  from_index: np.ndarray
  shift: np.ndarray
  key_mask: np.ndarray
  index_mask: np.ndarray


def _plan(key_bits: int, index_bits: int, width: int, key_dtype: jnp.dtype) -> _Passes:
  key_passes, index_passes = -(-key_bits // width), -(-index_bits // width)
  key_shifts = [width * (key_passes - 1 - p) for p in range(key_passes)]
  index_shifts = [width * (index_passes - 1 - p) for p in range(index_passes)]
  # The bits at and above each shift (Python ints: no overflow), cut to the word.
  key_ones, index_ones = (1 << (8 * jnp.dtype(key_dtype).itemsize)) - 1, (1 << 32) - 1
  key_decided = [0] + [key_ones & ~((1 << s) - 1) for s in key_shifts]
  index_decided = [0] + [index_ones & ~((1 << s) - 1) for s in index_shifts]
  return _Passes(
    from_index=np.array([False] * key_passes + [True] * index_passes),
    shift=np.array(key_shifts + index_shifts, np.int32),
    key_mask=np.array(key_decided + [key_ones] * index_passes, key_dtype),
    index_mask=np.array([0] * key_passes + index_decided, np.uint32),
  )


def _keep_top_k_in_place(
  leaves: Sequence[jax.Array], rows: Sequence[int], offsets: Sequence[int], ks: Sequence[int]
) -> list[jax.Array]:
  """Each leaf with all but the entries among its row's ``ks[row]`` largest magnitudes zeroed.

  The selection engine. Leaves share one float dtype; leaf ``i`` belongs to row ``rows[i]`` and
  ``offsets[i]`` is its first flat index within that row (ties go to the lower index). Every row
  must have more than ``ks[row] >= 1`` entries. No array is reshaped or concatenated: the
  partitioner keeps each leaf in its own sharding, and each pass all-reduces only counters.
  """
  n_rows = len(ks)
  spans, sizes = [0] * n_rows, [0] * n_rows
  for leaf, row, offset in zip(leaves, rows, offsets, strict=True):
    spans[row] = max(spans[row], offset + leaf.size)
    sizes[row] += leaf.size
  key_dtype = _KEY_DTYPES[jnp.dtype(leaves[0].dtype).itemsize]
  width = _digit_bits(max(sizes))
  bins = 1 << width
  index_bits = max(1, int(max(spans) - 1).bit_length())
  plan = _plan(8 * jnp.dtype(key_dtype).itemsize - 1, index_bits, width, key_dtype)
  # 16-bit counter indices where the bins and the dropped counter fit: the index array is a
  # leaf-sized temporary, and 16-bit ones make a pass ~1.6x faster on CPU.
  index_dtype = jnp.uint16 if bins + 1 <= 1 << 16 else jnp.int32

  def decided(i: int, leaf: jax.Array, p: jax.Array, prefix) -> tuple[jax.Array, ...]:
    """Leaf ``i``'s key and reversed index cut to the bits decided before pass ``p``, and its row's
    chosen bits (the composite ``(key, index)`` compares as the pair, key first)."""
    key_mask, index_mask = jnp.asarray(plan.key_mask)[p], jnp.asarray(plan.index_mask)[p]
    order = _reversed_flat_index(leaf.shape, offsets[i], spans[rows[i]])
    key_prefix, index_prefix = prefix
    return (
      _magnitude_keys(leaf) & key_mask,
      order & index_mask,
      key_prefix[rows[i]],
      index_prefix[rows[i]],
    )

  def one_pass(carry):
    p, need, _, prefix, leaves = carry
    shift, from_index = jnp.asarray(plan.shift)[p], jnp.asarray(plan.from_index)[p]
    hist = [jnp.zeros((bins,), jnp.int32) for _ in range(n_rows)]
    for i, leaf in enumerate(leaves):
      # Keys and indices are recomputed from the leaf in every pass (fused into the digit): no
      # leaf-sized key array is kept alive across the loop. One word holds both digit sources
      # (16-bit keys widen to the index's 32 bits).
      word_dtype = _KEY_DTYPES[max(4, jnp.dtype(leaf.dtype).itemsize)]
      order = _reversed_flat_index(leaf.shape, offsets[i], spans[rows[i]]).astype(word_dtype)
      word = jnp.where(from_index, order, _magnitude_keys(leaf).astype(word_dtype))
      digit = ((word >> shift.astype(word_dtype)) & (bins - 1)).astype(index_dtype)
      # Entries outside the prefix go to counter `bins`, out of range, which the scatter drops.
      key, index, row_key, row_index = decided(i, leaf, p, prefix)
      in_prefix = (key == row_key) & (index == row_index)
      digit = jnp.where(in_prefix, digit, jnp.asarray(bins, index_dtype))
      hist[rows[i]] = hist[rows[i]] + jax.lax.scatter_add(
        jnp.zeros((bins,), jnp.int32),
        digit[..., None],
        jnp.ones(digit.shape, jnp.int32),
        _HISTOGRAM_SCATTER,
        mode=jax.lax.GatherScatterMode.FILL_OR_DROP,
      )
    chosen, ties, above = _choose_digit(jnp.stack(hist), need)
    key_prefix, index_prefix = prefix
    key_prefix |= jnp.where(from_index, 0, chosen.astype(key_dtype) << shift.astype(key_dtype))
    index_prefix |= jnp.where(from_index, chosen.astype(jnp.uint32) << shift.astype(jnp.uint32), 0)
    return p + 1, need - above, ties, (key_prefix, index_prefix), leaves

  def cutting(carry) -> jax.Array:
    p, need, ties, _, _ = carry
    return (p < len(plan.shift)) & jnp.any(need < ties)

  need = jnp.asarray(np.asarray(ks, np.int32))
  start = (jnp.zeros((n_rows,), key_dtype), jnp.zeros((n_rows,), jnp.uint32))
  # The leaves ride through the loop and are read from its result: a leaf only read inside the loop
  # and again after it would be copied into the loop's state (a params-sized temporary).
  p, _, _, prefix, leaves = jax.lax.while_loop(
    cutting, one_pass, (jnp.int32(0), need, need + 1, start, list(leaves))
  )
  # Each row now keeps all its entries whose decided bits equal its chosen ones (need == ties), and
  # every entry whose decided bits are larger.
  out = []
  for i, leaf in enumerate(leaves):
    key, index, row_key, row_index = decided(i, leaf, p, prefix)
    kept = (key > row_key) | ((key == row_key) & (index >= row_index))
    out.append(jnp.where(kept, leaf, jnp.zeros_like(leaf)))
  return out


def _may_be_split(x: jax.Array) -> bool:
  """Whether ``x`` may be split across devices, so that the selection must run under the mesh.

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


def _on_auto_axes(fn: Callable, leaves: Sequence[jax.Array]) -> list[jax.Array]:
  """``fn(leaves)`` with the mesh's explicit axes turned ``Auto``, each result in its leaf's spec.

  Under explicit axes every op must say how its output is sharded; the selection's scatters have no
  such rule. Inside ``auto_axes`` the partitioner places them (local counts, all-reduced counters),
  and the results come back sharded as the leaves are.
  """
  if not any(_may_be_split(leaf) for leaf in leaves):
    return fn(leaves)
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

  Leaves of one key width and one digit width are selected together, one row each: one loop of
  passes, whose every pass scatters each of them into counters of its own.
  """
  if len(leaves) != len(ks):
    raise ValueError(f"Got {len(leaves)} leaves but {len(ks)} values of k.")
  out = list(leaves)
  groups: dict[tuple[int, int, bool], list[int]] = {}
  for i, (leaf, k) in enumerate(zip(leaves, ks, strict=True)):
    if int(k) <= 0:
      out[i] = jnp.zeros_like(leaf)
    elif int(k) < leaf.size:
      key = (jnp.dtype(leaf.dtype).itemsize, _digit_bits(leaf.size), _may_be_split(leaf))
      groups.setdefault(key, []).append(i)
  for members in groups.values():
    member_ks = [int(ks[i]) for i in members]
    rows = list(range(len(members)))
    kept = _on_auto_axes(
      lambda ls, rows=rows, ks=member_ks: _keep_top_k_in_place(ls, rows, [0] * len(ls), ks),
      [leaves[i] for i in members],
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
  rows = [0] * len(leaves)
  kept = _on_auto_axes(lambda ls: _keep_top_k_in_place(ls, rows, offsets, [k]), cast)
  return [kept_leaf.astype(leaf.dtype) for kept_leaf, leaf in zip(kept, leaves, strict=True)]
