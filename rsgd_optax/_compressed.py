"""Compressed data-parallel gradient exchange with error feedback.

The residual schemes began as gradient compressors between workers (the paper's section 2): here they
are one. Inside :func:`jax.shard_map` over a mesh axis, each device compresses its own gradient plus
its error memory, keeps what it did not send as its memory, and every device returns the same mean.
Two exchanges carry the compact wire format (packed sign bits and a scale, or top-k index/value
pairs): ``all_gather`` (every device receives every device's compressed gradient) and ``two_phase``
(a compressed all-reduce: ``all_to_all`` of chunks, a second compression of each chunk's average with
a server memory, ``all_gather`` of the result), whose bytes per device do not grow with the devices.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import PartitionSpec

from rsgd_optax import _dtypes, _schemes, _tree

PyTree = Any
AxisName = str | tuple[str, ...]


class CompressedMeanState(NamedTuple):
  """State of :func:`rsgd_optax.compressed_mean` with error feedback.

  Attributes:
    memory: the error-feedback memory ``e`` of each floating-point leaf, with a leading device axis:
      ``(devices, *leaf.shape)`` outside :func:`jax.shard_map`, where ``devices`` is the size of the
      compressed mesh axis, and ``(1, *leaf.shape)`` (this device's own row) inside it. Pass it
      through ``shard_map`` with the partition spec ``P(axis_name)`` (see
      :func:`rsgd_optax.memory_specs`). :class:`optax.MaskedNode` for leaves with no memory
      (not floating point, or averaged exactly: ``exact_below``).
  """

  memory: PyTree


class TwoPhaseMeanState(NamedTuple):
  """State of :func:`rsgd_optax.compressed_mean` with ``exchange="two_phase"`` and error feedback.

  Attributes:
    memory: the worker memory ``e_i`` of each floating-point leaf, as in
      :class:`CompressedMeanState`: ``(devices, *leaf.shape)`` outside :func:`jax.shard_map`,
      ``(1, *leaf.shape)`` inside it.
    server_memory: the server memory ``s_j`` of each floating-point leaf: device ``j`` serves the
      ``j``-th of ``devices`` equal pieces of the flattened leaf (zero-padded to a multiple of
      ``devices``), so it is ``(devices, ceil(leaf.size / devices))`` outside ``shard_map`` and
      ``(1, ceil(leaf.size / devices))`` inside it. The padding entries stay zero. Row-major
      concatenation of the rows, cut to ``leaf.size``, is the server memory of the whole leaf.
  """

  memory: PyTree
  server_memory: PyTree


class ExactStepsState(NamedTuple):
  """State of :func:`rsgd_optax.compressed_mean` with ``exact_steps``: a step count around the rest.

  Attributes:
    count: the number of updates so far (int32, the same on every device: ``P()``, which
      :func:`rsgd_optax.memory_specs` gives it).
    inner: the state without ``exact_steps``: :class:`CompressedMeanState`,
      :class:`TwoPhaseMeanState` or :class:`optax.EmptyState` (without error feedback).
  """

  count: jax.Array  # type: ignore[assignment]  # optax's name; shadows tuple.count
  inner: Any


EXCHANGES = ("all_gather", "two_phase")


def _axis_names(axis: AxisName) -> tuple[str, ...]:
  return (axis,) if isinstance(axis, str) else tuple(axis)


def _validate_axis(axis: Any, name: str) -> tuple[str, ...]:
  names = _axis_names(axis) if isinstance(axis, str | tuple) else ()
  if not names or not all(isinstance(n, str) and n for n in names):
    raise ValueError(
      f"`{name}` must be a mesh axis name or a tuple of them, for example 'data', got {axis!r}."
    )
  return names


def _wire_format(scheme: Any) -> _schemes._ScaledSign | _schemes._TopK:
  """The scheme itself if it has a wire format (scaled sign, top-k); a ValueError otherwise."""
  if isinstance(scheme, _schemes._Scaling):
    raise ValueError(
      "compressed_mean cannot compress with the scaling scheme: alpha * g has as many entries in "
      "full precision as the gradient itself, so it would send as many bytes as an uncompressed "
      "exchange. For the exact mean use jax.lax.pmean(grads, axis_name); to compress, pass "
      "rsgd.scaled_sign() or rsgd.top_k(fraction)."
    )
  if isinstance(scheme, _schemes._ScaledSign | _schemes._TopK):
    return scheme
  raise ValueError(
    "compressed_mean needs a scheme with a wire format: rsgd.scaled_sign() (packed sign bits and a "
    f"scale) or rsgd.top_k(fraction) (index/value pairs), got {scheme!r}."
  )


def _memory_rows(names: tuple[str, ...]) -> int:
  """Rows of a new memory: 1 inside ``shard_map`` over ``names``, their size outside it."""
  mesh = jax.sharding.get_abstract_mesh()
  missing = [n for n in names if mesh.empty or n not in mesh.shape]
  if missing:
    raise ValueError(
      f"compressed_mean's init needs the mesh that holds axis {missing[0]!r}: call it inside "
      f"jax.shard_map over that axis, or under `with jax.set_mesh(mesh):`, so that the "
      "error-feedback memory gets one row per device."
    )
  if all(n in mesh.manual_axes for n in names):
    return 1
  return math.prod(mesh.shape[n] for n in names)


def _bound_axis_size(
  names: tuple[str, ...], what: str, caller: str = "compressed_mean's update"
) -> int:
  try:
    return math.prod(jax.lax.axis_size(n) for n in names)
  except NameError as e:
    raise ValueError(
      f"{caller} runs inside jax.shard_map, where each device holds its own "
      f"gradient: {what} {names!r} is not a bound axis here. Wrap the train step in "
      "jax.shard_map over a mesh with that axis."
    ) from e


def _varying_axes(x: jax.Array) -> set[str]:
  """The mesh axes along which JAX's type of ``x`` says it varies (empty without ``check_vma``)."""
  aval = jax.typeof(x)
  manual = getattr(aval, "manual_axis_type", None)  # jax >= 0.9; ``vma`` before
  return set(manual.varying if manual is not None else getattr(aval, "vma", ()))


def _same_everywhere(x: Any, axes: tuple[str, ...]) -> Any:
  """``x`` passed through, typed the same on every device along ``axes``.

  A leaf that JAX's type says varies along some of ``axes`` becomes the value of the first device
  along them, which is what ``shard_map`` returns for a replicated output when it does not check
  (``check_vma=False``); an empty leaf or a ``float0`` leaf (no values) becomes a constant.
  """
  if not hasattr(x, "dtype"):
    return x
  varying = tuple(a for a in axes if a in _varying_axes(x))
  if not varying:
    return x
  if x.size == 0 or x.dtype == jax.dtypes.float0:
    return (
      np.zeros(x.shape, x.dtype) if x.dtype == jax.dtypes.float0 else jnp.zeros(x.shape, x.dtype)
    )
  return jax.lax.all_gather(x, varying, to="invarying")[0]


def _check_per_device(grad: jax.Array, memory: jax.Array, names: tuple[str, ...]) -> None:
  """Refuses gradients that are the same on every device (already summed by ``jax.grad``).

  Inside ``shard_map``, ``jax.grad`` with respect to replicated params returns the gradient summed
  over the devices: an uncompressed all-reduce before the exchange. Where JAX tracks which values
  vary across devices (``check_vma``, the default), the memory varies and such a gradient does not.
  """
  memory_varies = set(names) <= _varying_axes(memory)
  grad_varies = set(names) <= _varying_axes(grad)
  if memory_varies and not grad_varies:
    axes = names[0] if len(names) == 1 else names
    raise ValueError(
      f"compressed_mean got gradients that are the same on every device along {axes!r}: inside "
      "jax.shard_map, jax.grad with respect to replicated params sums the gradient over the "
      "devices (a full uncompressed all-reduce). Take each device's own gradient at "
      f"jax.lax.pcast(params, {axes!r}, to='varying')."
    )


# ---------------------------------------------------------------------------------------------
# Wire formats. Each encoder returns (payload, own) where payload is a tuple of arrays to gather and
# own is R(v) per leaf as the sender decodes it; each decoder turns the gathered payloads (a leading
# axis of the senders) into the sum over senders, per leaf, in the accumulation dtype.


def _encode_sign(
  per_leaf: bool, vs: list[jax.Array], block_size: int | None = None
) -> tuple[tuple[jax.Array, ...], list]:
  """Packed ``v >= 0`` bits and float32 scales: per leaf, for the tree, or per block of a leaf."""
  acc = _dtypes.accumulation_dtype(*(v.dtype for v in vs))
  if block_size is not None:
    scales = jnp.concatenate([_schemes.block_scales(v, block_size, acc) for v in vs])
  else:
    sums = jnp.stack([jnp.sum(jnp.abs(v), dtype=acc) for v in vs])
    sizes = jnp.asarray([max(v.size, 1) for v in vs], acc)
    if per_leaf:
      scales = sums / sizes
    else:
      scales = (jnp.sum(sums) / jnp.asarray(max(sum(v.size for v in vs), 1), acc))[None]
  # One bit an entry cannot carry sign(0) = 0: an entry with v = 0 is sent as +scale, and the error
  # memory keeps the difference.
  bits = jnp.packbits(jnp.concatenate([(v >= 0).ravel() for v in vs]))
  own = []
  for v, scale in zip(vs, _entry_scales(scales[None], vs, per_leaf, block_size), strict=True):
    scale = scale[0, 0] if block_size is None else scale[0].reshape(v.shape)
    own.append((scale * jnp.where(v >= 0, 1, -1).astype(acc)).astype(v.dtype))
  return (bits, scales), own


def _entry_scales(
  scales: jax.Array, vs: list, per_leaf: bool, block_size: int | None
) -> list[jax.Array]:
  """Per leaf, each sender's scale of every entry: ``(senders, leaf.size)`` (or broadcastable).

  ``scales`` is ``(senders, leaves)``, ``(senders, 1)`` (one for the tree) or, with blocks,
  ``(senders, sum_l ceil(d_l / block_size))``: every leaf's block scales, leaf after leaf.
  """
  out, first = [], 0
  for i, v in enumerate(vs):
    if block_size is None:
      out.append(scales[:, i if per_leaf else 0, None])
      continue
    blocks = -(-v.size // block_size)
    out.append(_by_entry(scales[:, first : first + blocks], block_size, v.size))
    first += blocks
  return out


def _sum_sign(per_leaf: bool, vs: list, payload: tuple, acc: Any, block_size: int | None) -> list:
  """The senders' ``scale * (+-1)``, each rounded into its leaf's dtype as its sender did, summed."""
  bits, scales = payload  # (senders, bytes), (senders, leaves or 1 or blocks)
  signs = jnp.unpackbits(bits, axis=1, count=sum(v.size for v in vs)).astype(acc) * 2 - 1
  sums, start = [], 0
  for v, scale in zip(vs, _entry_scales(scales, vs, per_leaf, block_size), strict=True):
    sent = (scale * signs[:, start : start + v.size]).astype(v.dtype).astype(acc)
    sums.append(jnp.sum(sent, axis=0).reshape(v.shape))
    start += v.size
  return sums


def _wire_value_dtype(vs: list) -> Any:
  """The values' dtype on the wire: the widest leaf dtype, so every value travels exactly."""
  return _dtypes.wider_float(*(v.dtype for v in vs))


def _encode_top_k(
  fraction: float, per_leaf: bool, vs: list[jax.Array]
) -> tuple[tuple[jax.Array, ...], list]:
  wire = _wire_value_dtype(vs)
  flat = jnp.concatenate([v.ravel().astype(wire) for v in vs])
  # lax.top_k puts the lower index first among equal magnitudes: the scheme's exact tie rule.
  if per_leaf:
    index_parts, start = [], 0
    for v in vs:
      k = _schemes.top_k_count(fraction, v.size)
      index_parts.append(jax.lax.top_k(jnp.abs(flat[start : start + v.size]), k)[1] + start)
      start += v.size
    index = jnp.concatenate(index_parts)
  else:
    index = jax.lax.top_k(jnp.abs(flat), _schemes.top_k_count(fraction, flat.size))[1]
  index = index.astype(jnp.int32)
  values = flat[index]
  own = _split_like(vs, jnp.zeros_like(flat).at[index].set(values))
  return (index, values), [c.astype(v.dtype) for c, v in zip(own, vs, strict=True)]


def _split_like(vs: list, flat: jax.Array) -> list:
  out, start = [], 0
  for v in vs:
    out.append(flat[start : start + v.size].reshape(v.shape))
    start += v.size
  return out


def _sum_top_k(vs: list, payload: tuple, acc: Any) -> list:
  index, values = payload
  total = sum(v.size for v in vs)
  summed = jnp.zeros([total], acc).at[index.ravel()].add(values.ravel().astype(acc))
  return _split_like(vs, summed)


# ---------------------------------------------------------------------------------------------
# The two-phase exchange. Every float leaf is flattened, zero-padded to a multiple of the device
# count P and cut into P equal pieces; chunk j is the concatenation of every leaf's piece j (the
# same layout on every device), and device j serves it: it receives chunk j of every device's
# compressed gradient (all_to_all), averages it, adds its server memory, compresses again, keeps the
# difference and sends the result to everyone (all_gather).


class _Layout(NamedTuple):
  """Where each leaf's piece sits in a chunk: ``pieces[l]`` entries from ``offsets[l]``."""

  sizes: tuple[int, ...]
  pieces: tuple[int, ...]
  offsets: tuple[int, ...]
  chunk: int  # entries of a chunk

  @classmethod
  def of(cls, sizes: list[int], devices: int) -> _Layout:
    pieces = tuple(server_piece(d, devices) for d in sizes)
    offsets = tuple(int(o) for o in np.cumsum((0, *pieces))[:-1])
    return cls(tuple(sizes), pieces, offsets, int(sum(pieces)))


def server_piece(size: int, devices: int) -> int:
  """Entries of a leaf that each device serves in the two-phase exchange: ``ceil(size / devices)``."""
  return -(-size // devices)


def _chunked(vs: list, layout: _Layout, devices: int, dtype: Any) -> jax.Array:
  """The leaves as ``(devices, chunk)``: row ``j`` is chunk ``j`` (every leaf's piece ``j``)."""
  rows = []
  for v, d, piece in zip(vs, layout.sizes, layout.pieces, strict=True):
    flat = jnp.pad(v.ravel().astype(dtype), (0, devices * piece - d))
    rows.append(flat.reshape(devices, piece))
  return jnp.concatenate(rows, axis=1)


def _unchunked(rows: jax.Array, vs: list, layout: _Layout) -> list:
  """Inverse of :func:`_chunked`: ``(devices, chunk)`` back to leaves shaped as ``vs``."""
  out = []
  for v, d, piece, start in zip(vs, layout.sizes, layout.pieces, layout.offsets, strict=True):
    out.append(rows[:, start : start + piece].reshape(-1)[:d].reshape(v.shape))
  return out


def _pieces(chunk: jax.Array, layout: _Layout) -> list:
  """One chunk ``(chunk,)`` cut into its leaves' pieces."""
  return [chunk[o : o + n] for o, n in zip(layout.offsets, layout.pieces, strict=True)]


def _valid(layout: _Layout, index: jax.Array) -> list:
  """Per piece of chunk ``index``: True on the entries of the leaf, False on its zero padding."""
  return [
    index * piece + jnp.arange(piece) < d
    for d, piece in zip(layout.sizes, layout.pieces, strict=True)
  ]


def _pack(bits: jax.Array) -> jax.Array:
  """Booleans along the last axis packed eight to a byte (zero-padded to a multiple of 8)."""
  pad = -bits.shape[-1] % 8
  return jnp.packbits(jnp.pad(bits, [(0, 0)] * (bits.ndim - 1) + [(0, pad)]), axis=-1)


def _signs(packed: jax.Array, count: int, acc: Any) -> jax.Array:
  return jnp.unpackbits(packed, axis=-1, count=count).astype(acc) * 2 - 1


def _select_row(
  pieces: list, fraction: float, per_leaf: bool, layout: _Layout
) -> tuple[jax.Array, jax.Array, list]:
  """Top-k of one chunk, given as its leaves' pieces: of each piece (``per_leaf``) or of the chunk.

  ``k`` is ``top_k_count(fraction, n)`` of the piece's (or the chunk's) ``n`` entries, padding
  included, so every chunk sends the same count; ties go to the lower index (``lax.top_k``).
  Returns the indices within the chunk (int32), the values, and the pieces with the selected
  entries zeroed (what was not sent).
  """
  if per_leaf:
    index_parts, value_parts, rest = [], [], []
    for x, start in zip(pieces, layout.offsets, strict=True):
      k = _schemes.top_k_count(fraction, x.size)
      index = jax.lax.top_k(jnp.abs(x), k)[1]
      index_parts.append(index + start)
      value_parts.append(x[index])
      rest.append(x.at[index].set(0))
    return (
      jnp.concatenate(index_parts).astype(jnp.int32),
      jnp.concatenate(value_parts),
      rest,
    )
  chunk = jnp.concatenate(pieces)
  index = jax.lax.top_k(jnp.abs(chunk), _schemes.top_k_count(fraction, layout.chunk))[1]
  return index.astype(jnp.int32), chunk[index], _pieces(chunk.at[index].set(0), layout)


def _leaf_rows(vs: list, layout: _Layout, devices: int) -> list:
  """Each leaf as ``(devices, piece)``: flattened, zero-padded, row ``j`` its piece ``j``."""
  return [
    jnp.pad(v.ravel(), (0, devices * piece - d)).reshape(devices, piece)
    for v, d, piece in zip(vs, layout.sizes, layout.pieces, strict=True)
  ]


def _from_rows(rows: jax.Array, v: jax.Array, size: int) -> jax.Array:
  """A leaf's ``(devices, piece)`` rows back in the leaf's shape."""
  return rows.reshape(-1)[:size].reshape(v.shape)


def _decode_top_k(
  index: jax.Array, values: jax.Array, vs: list, layout: _Layout, fraction: float, per_leaf: bool
) -> list:
  """Every device's selected ``(index, value)`` pairs of its chunk (``(devices, K)``) as leaves."""
  devices = index.shape[0]
  rows = jnp.arange(devices)[:, None]
  if not per_leaf:
    dense = jnp.zeros((devices, layout.chunk), values.dtype).at[rows, index].set(values)
    return _unchunked(dense, vs, layout)
  out, first = [], 0
  for v, d, piece, start in zip(vs, layout.sizes, layout.pieces, layout.offsets, strict=True):
    k = _schemes.top_k_count(fraction, piece)
    own_index = index[:, first : first + k] - start
    dense = (
      jnp.zeros((devices, piece), values.dtype)
      .at[rows, own_index]
      .set(values[:, first : first + k])
    )
    out.append(_from_rows(dense, v, d))
    first += k
  return out


def _block_counts(layout: _Layout, devices: int, block_size: int) -> list[np.ndarray]:
  """Per leaf, ``(devices, blocks)``: entries of the leaf (not padding) in block ``b`` of piece ``j``.

  Each piece of ``n`` entries is cut into ``ceil(n / block_size)`` blocks, the last one shorter.
  """
  out = []
  for d, piece in zip(layout.sizes, layout.pieces, strict=True):
    inside = np.clip(d - piece * np.arange(devices), 0, piece)[:, None]  # entries of row j
    starts = block_size * np.arange(-(-piece // block_size))[None, :]
    out.append(np.clip(inside - starts, 0, block_size).astype(np.int32))
  return out


def _piece_block_scales(rows: jax.Array, counts: Any, block_size: int, acc: Any) -> jax.Array:
  """``mean |x|`` over the leaf's entries of each block of the last axis (padding is zero)."""
  piece = rows.shape[-1]
  blocks = -(-piece // block_size)
  pad = [(0, 0)] * (rows.ndim - 1) + [(0, blocks * block_size - piece)]
  magnitudes = jnp.pad(jnp.abs(rows).astype(acc), pad)
  sums = jnp.sum(magnitudes.reshape(*rows.shape[:-1], blocks, block_size), axis=-1)
  return sums / jnp.maximum(jnp.asarray(counts), 1).astype(acc)


def _by_entry(scales: jax.Array, block_size: int, size: int) -> jax.Array:
  """Block scales along the last axis repeated to one per entry, cut to ``size`` entries."""
  blocks = scales.shape[-1]
  return jnp.repeat(scales, block_size, axis=-1, total_repeat_length=blocks * block_size)[
    ..., :size
  ]


def _sign_scales(per_leaf: bool, sums: list, sizes: list[int], acc: Any) -> jax.Array:
  """``mean |v|`` per leaf (or over the tree) from each leaf's ``sum |v|``."""
  stacked = jnp.stack(sums)
  if per_leaf:
    return stacked / jnp.asarray([max(d, 1) for d in sizes], acc)
  return (jnp.sum(stacked) / jnp.asarray(max(sum(sizes), 1), acc))[None]


def _two_phase(
  scheme: Any,
  grads: list,
  errors: list | None,
  servers: list | None,
  names: tuple[str, ...],
  devices: int,
) -> tuple[list, list, list | None]:
  """One two-phase exchange of this device's gradient leaves ``grads`` plus its memory ``errors``.

  ``errors`` and ``servers`` hold this device's worker memory per leaf and its server memory piece
  per leaf (None: no memory). Returns the mean per leaf (the same on every device, in the dtype of
  ``v = g + e``), ``v - R(v)`` per leaf (what this device did not send: its new worker memory, in
  ``v``'s dtype), and the new server memory pieces (or None).
  """
  if errors is None:
    vs = list(grads)
  else:
    vs = [_dtypes.wider_float(g.dtype, e.dtype) for g, e in zip(grads, errors, strict=True)]
    vs = [jax.ShapeDtypeStruct(g.shape, dtype) for g, dtype in zip(grads, vs, strict=True)]
  layout = _Layout.of([g.size for g in grads], devices)
  blocks = getattr(scheme, "block_size", None)
  index = jax.lax.axis_index(names)
  acc = _dtypes.accumulation_dtype(*(v.dtype for v in vs))
  valid = _valid(layout, index)
  if isinstance(scheme, _schemes._TopK):
    wire = _wire_value_dtype(vs)

    def select(carry: None, rows: tuple) -> tuple[None, tuple]:
      g_pieces, e_pieces = rows
      if e_pieces is not None:
        g_pieces = [
          g.astype(v.dtype) + e.astype(v.dtype)
          for g, e, v in zip(g_pieces, e_pieces, vs, strict=True)
        ]
      pieces = [g.astype(wire) for g in g_pieces]
      return carry, _select_row(pieces, scheme.fraction, scheme.per_leaf, layout)

    # One chunk at a time: lax.top_k of a single row runs without sorting the whole row, and
    # g + e is formed a chunk at a time.
    rows = (
      _leaf_rows(grads, layout, devices),
      None if errors is None else _leaf_rows(errors, layout, devices),
    )
    _, (*sent, rest) = jax.lax.scan(select, None, rows)
    residuals = [
      _from_rows(r, v, d).astype(v.dtype) for r, v, d in zip(rest, vs, layout.sizes, strict=True)
    ]
    index_in, values_in = (jax.lax.all_to_all(x, names, 0, 0) for x in sent)
    total = jnp.zeros([layout.chunk], acc).at[index_in.ravel()].add(values_in.ravel().astype(acc))
    totals = _pieces(total, layout)
  else:
    if errors is not None:
      vs = [
        g.astype(v.dtype) + e.astype(v.dtype) for g, e, v in zip(grads, errors, vs, strict=True)
      ]
    bits = _pack(_chunked([v >= 0 for v in vs], layout, devices, jnp.bool_))
    bits_in = jax.lax.all_to_all(bits, names, 0, 0)  # (senders, bytes of a chunk)
    signs = _signs(bits_in, layout.chunk, acc)
    residuals, totals = [], []
    if blocks is None:
      sums = [jnp.sum(jnp.abs(v), dtype=acc) for v in vs]
      scales = _sign_scales(scheme.per_leaf, sums, list(layout.sizes), acc)
      for i, v in enumerate(vs):
        sign = jnp.where(v >= 0, 1, -1).astype(acc)
        residuals.append(v - (scales[i if scheme.per_leaf else 0] * sign).astype(v.dtype))
      scales_in = jax.lax.all_gather(scales, names)  # (senders, leaves or 1)
      for i, (v, piece) in enumerate(zip(vs, _pieces(signs.T, layout), strict=True)):
        scale = scales_in[:, i if scheme.per_leaf else 0]
        totals.append(jnp.sum((piece * scale).astype(v.dtype).astype(acc), axis=1))
    else:
      # One scale per block of each piece: the scales of chunk j go to device j with its bits.
      v_rows = _leaf_rows(vs, layout, devices)
      worker_scales = [
        _piece_block_scales(r, counts, blocks, acc)
        for r, counts in zip(v_rows, _block_counts(layout, devices, blocks), strict=True)
      ]
      for v, r, scale, d in zip(vs, v_rows, worker_scales, layout.sizes, strict=True):
        c = _by_entry(scale, blocks, r.shape[-1]) * jnp.where(r >= 0, 1, -1).astype(acc)
        residuals.append(v - _from_rows(c.astype(v.dtype), v, d))
      scales_in = jax.lax.all_to_all(jnp.concatenate(worker_scales, axis=1), names, 0, 0)
      first = 0
      for v, piece, scale in zip(vs, _pieces(signs.T, layout), worker_scales, strict=True):
        own = scales_in[:, first : first + scale.shape[1]]
        first += scale.shape[1]
        entry = _by_entry(own, blocks, piece.shape[0]).T  # (piece, senders)
        totals.append(jnp.sum((piece * entry).astype(v.dtype).astype(acc), axis=1))
  # The server: the average of its chunk, plus its memory, compressed again.
  ws = []
  for i, (v, total, ok) in enumerate(zip(vs, totals, valid, strict=True)):
    mean = jnp.where(ok, total / jnp.asarray(devices, acc), 0).astype(v.dtype)
    if servers is None:
      ws.append(mean)
    else:
      wide = _dtypes.wider_float(v.dtype, servers[i].dtype)
      ws.append(mean.astype(wide) + servers[i].astype(wide))
  if isinstance(scheme, _schemes._TopK):
    picked_index, picked_values, rest = _select_row(
      [w.astype(wire) for w in ws], scheme.fraction, scheme.per_leaf, layout
    )
    c_pieces = [w.astype(wire) - r for w, r in zip(ws, rest, strict=True)]
    index_all, values_all = (
      jax.lax.all_gather(x, names, to="invarying") for x in (picked_index, picked_values)
    )
    decoded = _decode_top_k(index_all, values_all, vs, layout, scheme.fraction, scheme.per_leaf)
    means = [m.astype(v.dtype) for m, v in zip(decoded, vs, strict=True)]
  else:
    if blocks is None:
      sums = [jnp.sum(jnp.abs(w), dtype=acc) for w in ws]
      scales = jax.lax.psum(_sign_scales(scheme.per_leaf, sums, list(layout.sizes), acc), names)
      entries = [scales[i if scheme.per_leaf else 0] for i in range(len(ws))]
    else:
      # The server's blocks are its piece's: their scales need no psum, and travel with the bits.
      server_counts = [jnp.asarray(c)[index] for c in _block_counts(layout, devices, blocks)]
      server_scales = [
        _piece_block_scales(w, c, blocks, acc) for w, c in zip(ws, server_counts, strict=True)
      ]
      entries = [_by_entry(c, blocks, w.shape[0]) for c, w in zip(server_scales, ws, strict=True)]
      scales_all = jax.lax.all_gather(jnp.concatenate(server_scales), names, to="invarying")
    c_pieces = []
    for v, w, ok, scale in zip(vs, ws, valid, entries, strict=True):
      sign = jnp.where(w >= 0, 1, -1).astype(acc)
      c = (scale * sign).astype(v.dtype)
      c_pieces.append(jnp.where(ok, c, jnp.zeros_like(c)))
    bits = _pack(jnp.concatenate([w >= 0 for w in ws]))
    signs = _signs(jax.lax.all_gather(bits, names, to="invarying"), layout.chunk, acc)
    means = []
    if blocks is None:
      for i, (v, rows) in enumerate(zip(vs, _unchunked(signs, vs, layout), strict=True)):
        means.append((scales[i if scheme.per_leaf else 0] * rows).astype(v.dtype))
    else:
      first = 0
      for v, d, piece, start, scale in zip(
        vs, layout.sizes, layout.pieces, layout.offsets, server_scales, strict=True
      ):
        own = scales_all[:, first : first + scale.shape[0]]
        first += scale.shape[0]
        signed = _by_entry(own, blocks, piece) * signs[:, start : start + piece]
        means.append(_from_rows(signed.astype(v.dtype), v, d))
  if servers is None:
    return means, residuals, None
  new_servers = []
  for w, c, s in zip(ws, c_pieces, servers, strict=True):
    wide = _dtypes.wider_float(w.dtype, c.dtype)
    new_servers.append((w.astype(wide) - c.astype(wide)).astype(s.dtype))
  return means, residuals, new_servers


# ---------------------------------------------------------------------------------------------


def compressed_mean(
  scheme: _schemes.Scheme,
  axis_name: AxisName,
  *,
  error_feedback: bool = True,
  average_axis: AxisName | None = None,
  memory_dtype: Any = None,
  exchange: str = "all_gather",
  exact_below: int = 0,
  exact_steps: int = 0,
) -> optax.GradientTransformation:
  r"""The mean of the devices' gradients, exchanged compressed, with error feedback.

  Its ``update`` runs inside :func:`jax.shard_map` over ``axis_name``, where device ``i`` holds its
  own gradient ``g_i`` (from its share of the batch) and its own memory ``e_i`` (zero at the start).
  Each device compresses, keeps what it did not send, and returns the same mean of what was sent:

  .. math::
    v_i = g_i + e_i, \qquad c_i = R(v_i), \qquad e_i \leftarrow v_i - c_i, \qquad
    \text{update} = \frac{1}{n} \sum_{j=1}^{n} c_j.

  Without error feedback ``e_i`` stays zero and no memory is kept. ``c_i`` travels in a compact
  wire format (below), in one of two exchanges, picked by ``exchange``:

  - ``"all_gather"`` (the default): every device gathers every ``c_j`` and decodes them all, as
    above. Each device sends ``(P - 1)`` compressed gradients' worth of bytes, so against a float32
    ring all-reduce (``2 (P - 1) / P`` gradients) it saves ``64 / P`` times the bytes with sign and
    ``100 / P`` with top-k 1%, and decoding holds ``P`` senders' values: best on few devices.
  - ``"two_phase"``: a compressed all-reduce with a *server* memory on each device (as 1-bit
    Adam's). Each leaf is flattened, zero-padded to a multiple of ``P`` and cut into ``P`` pieces;
    device ``j`` serves piece ``j`` of every leaf (its chunk). Device ``i`` sends chunk ``j`` of
    ``c_i`` to device ``j`` (``all_to_all``); device ``j`` averages what it received, adds its
    server memory ``s_j``, compresses again and keeps the difference, then sends the result to
    everyone (``all_gather``):

    .. math::
      w_j = \frac{1}{n} \sum_{i=1}^{n} (c_i)_j + s_j, \qquad q_j = R(w_j), \qquad
      s_j \leftarrow w_j - q_j, \qquad \text{update} = (q_1, \dots, q_n).

    Each device sends about ``2 (P - 1) / P`` compressed gradients, whatever ``P``: about 32 times
    fewer bytes than the float32 all-reduce with sign, about 50 times with top-k 1%. For sign the
    server's scale is ``mean |w|`` over the whole leaf (a ``psum`` of one float a leaf); top-k
    selects in each piece (``per_leaf``, ``k`` from the piece's size, padding included) or in each
    chunk (``per_leaf=False``), so both phases send a fixed count, ``k / P`` of each piece. Without
    error feedback neither memory is kept.

  - :func:`rsgd_optax.scaled_sign`: one bit an entry (``v >= 0``, packed eight to a byte) and one
    float32 scale ``mean |v|`` per leaf (or one for the tree with ``per_leaf=False``, or one per
    block of ``B`` entries with ``scaled_sign(block_size=B)``: see below). One bit cannot
    carry ``sign(0) = 0``: an entry with ``v = 0`` is sent as ``+scale`` (the memory keeps the
    difference; without error feedback such an entry moves).
  - :func:`rsgd_optax.top_k`: ``k`` (int32 index, value) pairs per leaf (or for the tree), ``k``
    as in the scheme, ties toward the lower index; values in the widest dtype of the tree (with
    ``"two_phase"``: per piece or chunk, indices within the chunk).

  **The anchors' recipe** (each part off by default). The systems that train with compressed
  gradients near the exact mean's accuracy (PowerSGD's sign reducer, Deep Gradient Compression,
  1-bit Adam) add a few measures around the compressor; each is an option here, and works with
  both exchanges:

  - ``exact_below=N``: leaves with fewer than ``N`` entries (biases, normalization scales) are
    averaged exactly, ``jax.lax.pmean`` in float32 (``2 (P - 1) / P * 4`` bytes an entry), and keep
    no memory. The compressed leaves are exchanged as if the tree held no others (with
    ``per_leaf=False``, the tree's scale or top-k is theirs).
  - ``exact_steps=T``: the first ``T`` updates are the exact mean of every leaf (a float32
    ``pmean``), with every memory left as it is (zero); compression starts at update ``T + 1``.
    The state is an :class:`ExactStepsState`: the update ``count`` (replicated) around the state
    without the option. A ``lax.cond`` on the count picks the branch, so a step pays for one of
    the two exchanges, not both. On XLA:CPU with virtual host devices
    (``--xla_force_host_platform_device_count``), XLA's concurrency-optimized scheduler can run a
    step's independent collectives at once and in another order on each device (seen: one device
    waiting in an all-gather of the conditional and in an all-reduce at the same time), and the
    rendezvous then wait on each other for good: a step with ``exact_steps``, ``exact_below`` and
    a few dozen other ``pmean`` calls deadlocked at its first compressed update, every time.
    ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` in ``XLA_FLAGS`` (which the
    project's examples set) avoided it.
  - block-wise scales for sign: ``scaled_sign(block_size=B)`` sends one float32 scale per block of
    ``B`` consecutive entries, ``R(v)_b = mean |v_b| sign(v_b)``: ``4 / B`` more bytes an entry
    (``B = 256``: 1/64 on top of the 1/8 of the bits). With ``"all_gather"`` the blocks cut the
    flattened leaf; with ``"two_phase"`` they cut each device's piece of it (a block never spans
    two servers), in both phases, whose scales then travel with their chunk (no ``psum``).
  - :func:`rsgd_optax.memory_ratio`: ``max_i ||e_i|| / ||g_i + e_i||``, to log, for example,
    every epoch: the memory growing past what it is added to comes before a collapse.

  With ``d_l`` the entries of leaf ``l`` and ``t`` the update's number (from 1):

  .. math::
    \text{update}_l = \frac{1}{n} \sum_{i=1}^{n} g_{i,l}
    \quad \text{and} \quad e_{i,l},\ s_{j,l} \text{ unchanged}
    \qquad \text{if } d_l < N_{\text{exact\_below}} \text{ or } t \le T_{\text{exact\_steps}}.

  Leaves that are not floating point, and empty leaves, are not exchanged: they pass through,
  made the same on every device (a leaf that varies along the axes takes the first device's value,
  as ``shard_map`` does for a replicated output it does not check), so ``P()`` out_specs hold.

  The scaling scheme is refused: it would send as many bytes as the gradient (use
  ``jax.lax.pmean``). On a mesh with a fast and a slow axis, for example ``("host", "local")``,
  compress across the slow one (``axis_name="host"``) and give the fast one as ``average_axis``:
  gradients are first averaged over it with ``pmean``, so the devices of one host share one memory.

  Chain it in front of the base optimizer; residual views go behind it as usual:
  ``optax.chain(compressed_mean(scaled_sign(), "data"), optax.sgd(0.1, momentum=0.9),
  residual_scale(1 / 16))``. The whole ``update`` runs per device inside ``shard_map``: the other
  transformations' states see the same mean on every device and stay replicated (``P()``); only the
  memory is device-local. Take each device's own gradient at
  ``jax.lax.pcast(params, axis_name, to="varying")``: ``jax.grad`` with respect to the replicated
  params themselves returns the gradient already summed over the devices (an uncompressed
  all-reduce), which ``update`` refuses.

  **The memory.** :class:`CompressedMeanState` holds, for each float leaf, an array with a leading
  device axis. ``init`` called under ``with jax.set_mesh(mesh):`` makes it ``(devices, *shape)``
  (``devices``: the size of ``axis_name``), sharded as ``P(axis_name)`` on meshes with explicit axes;
  called inside ``shard_map`` it makes this device's ``(1, *shape)``. Pass the state through
  ``shard_map`` with :func:`rsgd_optax.memory_specs` as its spec, and save it with Orbax like any
  sharded array. Restored on another number of devices, the leading axis no longer matches and
  ``update`` refuses with a message; :func:`rsgd_optax.resize_memory` folds it to the new count,
  keeping the mean memory (the gradient mass not yet applied).

  Args:
    scheme: the compressor: :func:`rsgd_optax.scaled_sign` or :func:`rsgd_optax.top_k`.
    axis_name: the mesh axis (or tuple of axes) across which gradients are exchanged compressed.
    error_feedback: keep each device's memory ``e_i`` (default) or send ``R(g_i)`` alone.
    average_axis: mesh axis (or axes) averaged exactly with ``pmean`` before compressing, or None.
    memory_dtype: dtype of the memories; defaults to each parameter's dtype.
    exchange: ``"all_gather"`` (default) or ``"two_phase"`` (bytes per device that do not grow with
      the devices; see above). Pick ``"two_phase"`` from about 4 devices on: from 3 devices on it
      sends fewer bytes (about ``P / 2`` times fewer), and its temporaries do not grow with the
      devices; on 2 devices the bytes are the same and
      ``"all_gather"`` compresses once instead of twice.
    exact_below: leaves with fewer entries than this are averaged exactly (``pmean``) and keep no
      memory; 0 (default) compresses every leaf.
    exact_steps: the first this many updates are the exact mean of every leaf, memories untouched;
      0 (default) compresses from the first update. With it the state is an
      :class:`ExactStepsState`, the step ``count`` around the state without it.

  Returns:
    An :class:`optax.GradientTransformation`; its state is a :class:`CompressedMeanState` with error
    feedback (:class:`TwoPhaseMeanState` with ``exchange="two_phase"``), :class:`optax.EmptyState`
    without; with ``exact_steps``, that state inside an :class:`ExactStepsState`. Updates keep the
    gradients' dtypes; leaves that are not floating point pass through unchanged.

  Example:
    >>> import functools
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import rsgd_optax as rsgd
    >>> from jax.sharding import PartitionSpec as P
    >>> auto = (jax.sharding.AxisType.Auto,)
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=auto, devices=jax.devices()[:1])
    >>> tx = optax.chain(rsgd.compressed_mean(rsgd.scaled_sign(), "data"), optax.sgd(0.5))
    >>> params = {"w": jnp.array([1.0, 2.0, 3.0])}
    >>> with jax.set_mesh(mesh):
    ...   state = tx.init(params)
    >>> specs = rsgd.memory_specs(state, "data")
    >>> @jax.jit
    ... @functools.partial(
    ...   jax.shard_map, mesh=mesh, in_specs=(P(), specs, P("data")), out_specs=(P(), specs)
    ... )
    ... def step(params, state, batch):
    ...   local = jax.lax.pcast(params, "data", to="varying")  # this device's own gradient
    ...   grads = jax.grad(lambda p: jnp.sum((p["w"] - batch) ** 2))(local)
    ...   updates, state = tx.update(grads, state, params)
    ...   return optax.apply_updates(params, updates), state
    >>> params, state = step(params, state, jnp.zeros([1, 3]))
    >>> params["w"]  # the mean |g| is 4: each entry moves by 0.5 * 4
    Array([-1.,  0.,  1.], dtype=float32)
    >>> state[0].memory["w"]  # g - R(g), one row per device
    Array([[-2.,  0.,  2.]], dtype=float32)

    The two-phase exchange keeps a server memory too, one piece of each leaf a device:

    >>> two_phase = rsgd.compressed_mean(rsgd.scaled_sign(), "data", exchange="two_phase")
    >>> with jax.set_mesh(mesh):
    ...   state = two_phase.init({"w": jnp.zeros([3])})
    >>> state.server_memory["w"].shape  # (devices, ceil(3 / devices))
    (1, 3)

  References:
    Seide et al., "1-bit stochastic gradient descent and its application to data-parallel distributed
    training of speech DNNs", Interspeech 2014; Stich, Cordonnier and Jaggi, "Sparsified SGD with
    memory", NeurIPS 2018; Karimireddy et al., "Error feedback fixes SignSGD and other gradient
    compression schemes", ICML 2019; section 2 of the RSGD(m) paper.
  """
  scheme = _wire_format(scheme)
  if exchange not in EXCHANGES:
    raise ValueError(
      f"`exchange` must be 'all_gather' or 'two_phase', got {exchange!r}: 'two_phase' sends a "
      "number of bytes per device that does not grow with the devices, 'all_gather' sends one "
      "compressed gradient per device to every device."
    )
  two_phase = exchange == "two_phase"
  names = _validate_axis(axis_name, "axis_name")
  fast = () if average_axis is None else _validate_axis(average_axis, "average_axis")
  if set(fast) & set(names):
    raise ValueError(
      f"`average_axis` {average_axis!r} and `axis_name` {axis_name!r} share an axis: compress "
      "across the slow axis and average exactly across the other ones."
    )
  if not isinstance(error_feedback, bool):
    raise ValueError(f"`error_feedback` must be True or False, got {error_feedback!r}.")
  for name, value in (("exact_below", exact_below), ("exact_steps", exact_steps)):
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
      raise ValueError(
        f"`{name}` must be a non-negative integer (0, the default, turns it off), got {value!r}."
      )
  exact_below, exact_steps = int(exact_below), int(exact_steps)
  dtype = _tree.validated_dtype(memory_dtype, "memory_dtype")
  spec = PartitionSpec(names if len(names) > 1 else names[0])
  block_size = getattr(scheme, "block_size", None)

  def compressed_leaf(p: Any) -> bool:
    return _tree.is_float(p) and p.size >= exact_below

  def init_fn(params: PyTree) -> Any:
    inner = init_inner(params)
    return ExactStepsState(jnp.zeros([], jnp.int32), inner) if exact_steps else inner

  def init_inner(params: PyTree) -> Any:
    if not error_feedback:
      return optax.EmptyState()
    rows = _memory_rows(names)
    mesh = jax.sharding.get_abstract_mesh()
    devices = math.prod(mesh.shape[n] for n in names)
    explicit = rows > 1 and all(
      mesh.axis_types[mesh.axis_names.index(n)] == jax.sharding.AxisType.Explicit for n in names
    )

    def zeros(p: Any, shape: tuple[int, ...]) -> Any:
      if explicit:
        return jnp.zeros(shape, dtype or p.dtype, out_sharding=spec)
      return jnp.zeros(shape, dtype or p.dtype)

    def worker(p: Any) -> Any:
      return zeros(p, (rows, *p.shape)) if compressed_leaf(p) else optax.MaskedNode()

    memory = jax.tree.map(worker, params, is_leaf=lambda x: x is None)
    if not two_phase:
      return CompressedMeanState(memory)

    def server(p: Any) -> Any:
      if not compressed_leaf(p):
        return optax.MaskedNode()
      return zeros(p, (rows, server_piece(p.size, devices)))

    servers = jax.tree.map(server, params, is_leaf=lambda x: x is None)
    return TwoPhaseMeanState(memory, servers)

  def check_rows(memory: list, servers: list | None, slots: list[int], devices: int) -> None:
    for i in slots:
      rows = memory[i].shape[0]
      if servers is not None and rows == 1:
        rows, piece = servers[i].shape[0], servers[i].shape[-1]
        if rows == 1 and piece != server_piece(memory[i][0].size, devices):
          rows = "a piece of another size and"  # saved on another count, spec P(axis) given
      if rows != 1:
        raise ValueError(
          f"The error-feedback memory holds {rows} rows on each device instead of "
          f"one: either its shard_map spec is not P({spec[0]!r}) (use rsgd.memory_specs), or the "
          f"state was saved on another number of devices than the {devices} along "
          f"{axis_name!r} now: call rsgd.resize_memory(state, {devices}) after restoring it."
        )

  def exact_mean(g: jax.Array) -> jax.Array:
    """The exact mean over ``names``, summed in at least float32, in ``g``'s dtype."""
    acc = _dtypes.accumulation_dtype(g.dtype)
    return jax.lax.pmean(g.astype(acc), names).astype(g.dtype)

  def exchange_fn(
    grads: list, errors: list | None, pieces: list | None, devices: int
  ) -> tuple[list, list | None, list | None]:
    """The compressed mean per leaf (in the gradients' dtypes), new worker and server memories."""
    if two_phase:
      means, residuals, new_servers = _two_phase(scheme, grads, errors, pieces, names, devices)
    else:
      new_servers = None
      vs = grads
      if errors is not None:
        vs = []
        for g, e in zip(grads, errors, strict=True):
          wide = _dtypes.wider_float(g.dtype, e.dtype)
          vs.append(g.astype(wide) + e.astype(wide))
      if isinstance(scheme, _schemes._TopK):
        payload, own = _encode_top_k(scheme.fraction, scheme.per_leaf, vs)
      else:
        payload, own = _encode_sign(scheme.per_leaf, vs, block_size)
      gathered = tuple(jax.lax.all_gather(x, names, to="invarying") for x in payload)
      acc = _dtypes.accumulation_dtype(*(v.dtype for v in vs))
      if isinstance(scheme, _schemes._TopK):
        sums = _sum_top_k(vs, gathered, acc)
      else:
        sums = _sum_sign(scheme.per_leaf, vs, gathered, acc, block_size)
      means = [total / jnp.asarray(devices, acc) for total in sums]
      residuals = [v - c for v, c in zip(vs, own, strict=True)]
    means = [m.astype(g.dtype) for m, g in zip(means, grads, strict=True)]
    if errors is None:
      return means, None, None
    residuals = [r.astype(e.dtype) for r, e in zip(residuals, errors, strict=True)]
    return means, residuals, new_servers

  def update_fn(updates: PyTree, state: Any, params: PyTree = None) -> tuple[PyTree, Any]:
    del params
    devices = _bound_axis_size(names, "axis_name")
    if fast:
      _bound_axis_size(fast, "average_axis")
    leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
    floats = [i for i, g in enumerate(leaves) if _tree.is_float(g)]
    slots = [i for i in floats if leaves[i].size > 0]
    exact = [i for i in slots if leaves[i].size < exact_below]
    squeezed = [i for i in slots if i not in exact]
    count = None
    if exact_steps:
      count, state = state.count, state.inner
    memory = servers = None
    if error_feedback:
      memory = treedef.flatten_up_to(state.memory)  # type: ignore[attr-defined]
      if two_phase:
        servers = treedef.flatten_up_to(state.server_memory)  # type: ignore[attr-defined]
      check_rows(memory, servers, [i for i in floats if compressed_leaf(leaves[i])], devices)
    # Leaves that are not exchanged (not floating point, or empty) pass through, the same on every
    # device so that the caller's replicated out_specs hold.
    out = [g if i in slots else _same_everywhere(g, (*names, *fast)) for i, g in enumerate(leaves)]

    def new_state(new_memory: list | None, new_server: list | None) -> Any:
      inner = state
      if new_memory is not None:
        inner = CompressedMeanState(jax.tree.unflatten(treedef, new_memory))
        if two_phase:
          inner = TwoPhaseMeanState(inner.memory, jax.tree.unflatten(treedef, new_server or []))
      if count is None:
        return inner
      return ExactStepsState(optax.safe_int32_increment(count), inner)

    if not slots:
      return jax.tree.unflatten(treedef, out), new_state(memory, servers)
    if memory is not None and squeezed:
      _check_per_device(leaves[squeezed[0]], memory[squeezed[0]], names)
    grads = {i: leaves[i] for i in slots}
    if fast:
      grads = {i: jax.lax.pmean(g, fast) for i, g in grads.items()}
    for i in exact:
      out[i] = exact_mean(grads[i])
    new_memory, new_server = memory, servers
    if squeezed:
      g_list = [grads[i] for i in squeezed]
      errors = None if memory is None else [memory[i][0] for i in squeezed]
      pieces = None if servers is None else [servers[i][0] for i in squeezed]
      if count is None:
        means, errors, pieces = exchange_fn(g_list, errors, pieces, devices)
      else:
        # Warm-up: the exact mean, memories kept as they are. lax.cond on the replicated count runs
        # one branch on every device (the same one everywhere, so the collectives in it match): a
        # warm-up step costs a float32 pmean and no compression, a later step no pmean. Both
        # branches return the same types: the means are the same on every device in both, the
        # memories vary in both. (Computing both and selecting would pay both exchanges.)
        def warm(g_list: list, errors: Any, pieces: Any) -> tuple:
          return [exact_mean(g) for g in g_list], errors, pieces

        def cold(g_list: list, errors: Any, pieces: Any) -> tuple:
          return exchange_fn(g_list, errors, pieces, devices)

        means, errors, pieces = jax.lax.cond(
          count < exact_steps, warm, cold, g_list, errors, pieces
        )
      for i, mean in zip(squeezed, means, strict=True):
        out[i] = mean
      if memory is not None:
        assert errors is not None
        new_memory = list(memory)
        for i, e in zip(squeezed, errors, strict=True):
          new_memory[i] = e[None]
      if servers is not None:
        assert pieces is not None
        new_server = list(servers)
        for i, piece in zip(squeezed, pieces, strict=True):
          new_server[i] = piece[None]
    return jax.tree.unflatten(treedef, out), new_state(new_memory, new_server)

  return optax.GradientTransformation(init_fn, update_fn)


def _is_state(x: Any) -> bool:
  return isinstance(x, CompressedMeanState | TwoPhaseMeanState)


def memory_specs(opt_state: PyTree, axis_name: AxisName) -> PyTree:
  """Partition specs for passing ``opt_state`` through :func:`jax.shard_map`.

  The memories of every :class:`CompressedMeanState` and :class:`TwoPhaseMeanState` in
  ``opt_state`` get ``P(axis_name)`` (one row per device), every other leaf ``P()`` (replicated: the transformations
  behind :func:`rsgd_optax.compressed_mean` see the same mean on every device).

  Args:
    opt_state: an optimizer state (or its :func:`jax.eval_shape`), in any nesting.
    axis_name: the mesh axis (or axes) given to :func:`rsgd_optax.compressed_mean`.

  Returns:
    A pytree of :class:`jax.sharding.PartitionSpec` with the structure of ``opt_state``.

  Example:
    >>> import jax.numpy as jnp
    >>> import rsgd_optax as rsgd
    >>> state = rsgd.CompressedMeanState({"w": jnp.zeros([8, 3])})
    >>> rsgd.memory_specs(state, "data")
    CompressedMeanState(memory={'w': P('data',)})
  """
  names = _validate_axis(axis_name, "axis_name")
  spec = PartitionSpec(names if len(names) > 1 else names[0])

  def specs(node: Any) -> Any:
    if _is_state(node):
      return type(node)(*(jax.tree.map(lambda _: spec, field) for field in node))
    return PartitionSpec()

  return jax.tree.map(specs, opt_state, is_leaf=_is_state)


def resize_memory(opt_state: PyTree, devices: int) -> PyTree:
  r"""Folds the error-feedback memory onto another number of devices (after a restore).

  What the memory holds for training is its mean over devices, ``\bar e = \frac{1}{n} \sum_i e_i``:
  the gradient mass sent by nobody yet. Each of the ``devices`` new rows gets ``\bar e``, so the mean
  stays the same; the split of it among devices does not survive (it cannot: the new devices see
  other shares of the batch). The server memory of the two-phase exchange
  (:class:`TwoPhaseMeanState`) is one vector per leaf cut into pieces, one a device: it is cut
  again into ``devices`` pieces, every entry kept.

  Args:
    opt_state: an optimizer state holding :class:`CompressedMeanState` memories with a leading
      device axis (as saved: outside ``shard_map``), in any nesting.
    devices: the number of devices along the compressed axis now.

  Returns:
    ``opt_state`` with each memory leaf of shape ``(devices, *leaf.shape)`` and each server memory
    leaf of shape ``(devices, ceil(leaf.size / devices))``, in their dtypes.

  Example:
    >>> import jax.numpy as jnp
    >>> import rsgd_optax as rsgd
    >>> state = rsgd.CompressedMeanState({"w": jnp.array([[1.0, -2.0], [3.0, 0.0]])})
    >>> rsgd.resize_memory(state, 4).memory["w"]
    Array([[ 2., -1.],
           [ 2., -1.],
           [ 2., -1.],
           [ 2., -1.]], dtype=float32)
  """
  if isinstance(devices, bool) or not isinstance(devices, int | np.integer) or devices < 1:
    raise ValueError(f"`devices` must be a positive integer, got {devices!r}.")

  def fold(m: jax.Array) -> jax.Array:
    mean = jnp.mean(m, axis=0, dtype=_dtypes.accumulation_dtype(m.dtype)).astype(m.dtype)
    return jnp.broadcast_to(mean, (int(devices), *m.shape[1:]))

  def recut(m: jax.Array, s: jax.Array) -> jax.Array:
    size = math.prod(m.shape[1:])
    flat = s.reshape(-1)[:size]
    piece = server_piece(size, int(devices))
    return jnp.pad(flat, (0, int(devices) * piece - size)).reshape(int(devices), piece)

  def resize(node: Any) -> Any:
    if isinstance(node, TwoPhaseMeanState):
      memory = jax.tree.map(fold, node.memory)
      servers = jax.tree.map(recut, node.memory, node.server_memory)
      return TwoPhaseMeanState(memory, servers)
    if _is_state(node):
      return CompressedMeanState(jax.tree.map(fold, node.memory))
    return node

  return jax.tree.map(resize, opt_state, is_leaf=_is_state)


def memory_ratio(opt_state: PyTree, grads: PyTree, axis_name: AxisName) -> jax.Array:
  r"""How large the error-feedback memory is against what it is added to: a collapse warning.

  For device ``i`` with gradient ``g_i`` and worker memory ``e_i`` (over every leaf that keeps a
  memory, as one vector), and the largest over the devices along ``axis_name``:

  .. math::
    \rho = \max_i \frac{\lVert e_i \rVert_2}{\lVert g_i + e_i \rVert_2}
    \quad (0 \text{ where } g_i + e_i = 0).

  While error feedback keeps up, the memory stays a bounded share of what is compressed; a ratio
  that climbs to 1 and beyond (it can exceed 1: ``g_i`` may point against ``e_i``) and stays there
  says the memory is growing faster than the compressor sends it, the sign that precedes a
  collapse. The
  maximum, not the mean, because one device's runaway memory is enough to spoil the common mean.
  Call it inside :func:`jax.shard_map`, next to ``update``, with the state ``update`` receives and
  the same gradients; log it, for example, once an epoch. It costs one ``pmax`` of a float.

  Args:
    opt_state: an optimizer state holding the state of :func:`rsgd_optax.compressed_mean` with
      error feedback, in any nesting (the first one found is read), as passed to ``update``.
    grads: this device's gradients, the tree given to ``update``.
    axis_name: the mesh axis (or axes) given to :func:`rsgd_optax.compressed_mean`.

  Returns:
    A float32 scalar, the same on every device.

  Example:
    >>> import functools
    >>> import jax
    >>> import jax.numpy as jnp
    >>> import rsgd_optax as rsgd
    >>> from jax.sharding import PartitionSpec as P
    >>> auto = (jax.sharding.AxisType.Auto,)
    >>> mesh = jax.make_mesh((1,), ("data",), axis_types=auto, devices=jax.devices()[:1])
    >>> state = rsgd.CompressedMeanState({"w": jnp.array([[3.0, 0.0]])})
    >>> @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), P()), out_specs=P())
    ... def ratio(state, grads):
    ...   return rsgd.memory_ratio(state, grads, "data")
    >>> ratio(state, {"w": jnp.array([1.0, 3.0])})  # ||(3, 0)|| / ||(4, 3)||
    Array(0.6, dtype=float32)
  """
  names = _validate_axis(axis_name, "axis_name")
  found = [node for node in jax.tree.leaves(opt_state, is_leaf=_is_state) if _is_state(node)]
  if not found:
    raise ValueError(
      "memory_ratio found no error-feedback memory in `opt_state`: pass the optimizer state that "
      "holds rsgd.compressed_mean(..., error_feedback=True)'s state."
    )
  _bound_axis_size(names, "axis_name", "memory_ratio")
  leaves, treedef = jax.tree.flatten(grads, is_leaf=lambda x: x is None)
  memory = treedef.flatten_up_to(found[0].memory)  # type: ignore[attr-defined]
  e_sq = v_sq = jnp.zeros([], jnp.float32)
  for g, m in zip(leaves, memory, strict=True):
    if isinstance(m, optax.MaskedNode) or not _tree.is_float(g) or g.size == 0:
      continue
    if m.shape[0] != 1:
      raise ValueError(
        f"memory_ratio runs inside jax.shard_map with the memory's spec P({axis_name!r}) "
        f"(rsgd.memory_specs): it got {m.shape[0]} rows of memory on one device instead of one."
      )
    acc = _dtypes.accumulation_dtype(g.dtype, m.dtype)
    e = m[0].astype(acc)
    e_sq = e_sq + jnp.sum(e * e).astype(jnp.float32)
    v = g.astype(acc) + e
    v_sq = v_sq + jnp.sum(v * v).astype(jnp.float32)
  ratio = jnp.where(v_sq > 0, jnp.sqrt(e_sq / jnp.where(v_sq > 0, v_sq, 1)), 0.0)
  return jax.lax.pmax(ratio, names)
