"""The paper's equations in NumPy: the one reference every test of the library compares against.

Written from the paper (Algorithm 1, sections 2 and 7.1), not from the library, and it must never
import ``rsgd_optax``. Notation: ``y`` is the base optimizer's iterate (where RSGD takes gradients),
``r`` the residual, ``x = y + r`` the RSGD point (evaluated and shipped), ``u_t = y_{t+1} - y_t`` the
base update. A parameter tree is a list of NumPy arrays (the leaves, in a fixed order); arithmetic is
float64.

Schemes ``R`` map a list of arrays to a list of arrays of the same shapes. A base optimizer is a
factory of ``update(g, t) -> u`` with its own state, ``t`` counting from 1.
The JAX step loop that produces what is compared against this reference is in ``step_loop.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Leaves = list[np.ndarray]
Scheme = Callable[[Leaves], Leaves]
Update = Callable[[Leaves, int], Leaves]


def _f64(leaves: Sequence[Any]) -> Leaves:
  return [np.asarray(v, np.float64) for v in leaves]


# ---------------------------------------------------------------------------------------------
# The three schemes R.


def scaling(alpha: float) -> Scheme:
  """``R(v) = alpha v``."""
  return lambda leaves: [alpha * v for v in _f64(leaves)]


def scaled_sign(per_leaf: bool = True, block_size: int | None = None) -> Scheme:
  """``R(v) = (||v||_1 / d) sign(v)``, ``d`` the size of the leaf (or of the whole tree).

  With ``block_size=B``: each leaf flattened and cut into blocks of ``B`` consecutive entries (the
  last one shorter), each block ``b`` scaled by its own ``||v_b||_1 / |b|`` (Zheng et al., 2019).
  """

  def blockwise(v: np.ndarray) -> np.ndarray:
    flat = v.reshape(-1)
    out = np.zeros_like(flat)
    for start in range(0, flat.size, block_size):
      block = flat[start : start + block_size]
      out[start : start + block_size] = np.abs(block).mean() * np.sign(block)
    return out.reshape(v.shape)

  def scheme(leaves: Leaves) -> Leaves:
    leaves = _f64(leaves)
    if block_size is not None:
      return [blockwise(v) for v in leaves]
    if per_leaf:
      return [np.abs(v).sum() / v.size * np.sign(v) for v in leaves]
    scale = sum(np.abs(v).sum() for v in leaves) / sum(v.size for v in leaves)
    return [scale * np.sign(v) for v in leaves]

  return scheme


def top_k_count(fraction: float, size: int) -> int:
  """``k = max(1, round(fraction * d))``."""
  return max(1, round(fraction * size))


def kept_mask(x: Any, k: int) -> np.ndarray:
  """True on the ``k`` largest-magnitude entries of ``x``, in ``x``'s shape.

  Ties go to the lower flat index (a stable sort on ``-|x|``), the order the library promises.
  """
  flat = np.asarray(x, np.float64).reshape(-1)
  kept = np.zeros(flat.shape, bool)
  kept[np.argsort(-np.abs(flat), kind="stable")[:k]] = True
  return kept.reshape(np.shape(x))


def keep_top(x: Any, k: int) -> np.ndarray:
  """``x`` with all but its ``k`` largest-magnitude entries zeroed, in float64."""
  return np.where(kept_mask(x, k), np.asarray(x, np.float64), 0.0)


def keep_top_global(leaves: Sequence[Any], k: int) -> Leaves:
  """The ``k`` largest magnitudes over all leaves together, each leaf back in its own shape."""
  leaves = _f64(leaves)
  kept = keep_top(np.concatenate([v.reshape(-1) for v in leaves]), k)
  parts = np.split(kept, np.cumsum([v.size for v in leaves])[:-1])
  return [part.reshape(v.shape) for part, v in zip(parts, leaves, strict=True)]


def top_k(fraction: float, per_leaf: bool = True) -> Scheme:
  """Keeps the ``k`` largest-magnitude entries of each leaf (or of the whole tree)."""

  def scheme(leaves: Leaves) -> Leaves:
    if per_leaf:
      return [keep_top(v, top_k_count(fraction, np.size(v))) for v in leaves]
    return keep_top_global(leaves, top_k_count(fraction, sum(np.size(v) for v in leaves)))

  return scheme


# ---------------------------------------------------------------------------------------------
# Base optimizers, in optax's conventions.


def sgd(lr: float, momentum: float = 0.0, nesterov: bool = False) -> Update:
  """``m = g + mu m``; ``u = -lr m`` (Nesterov: ``u = -lr (g + mu m)``)."""
  m: Leaves | None = None

  def update(g: Leaves, t: int) -> Leaves:
    nonlocal m
    del t
    m = [gi + momentum * mi for gi, mi in zip(g, m or [0.0] * len(g), strict=True)]
    step = [gi + momentum * mi for gi, mi in zip(g, m, strict=True)] if nesterov else m
    return [-lr * s for s in step]

  return update


def adam(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Update:
  """Bias-corrected Adam: ``u = -lr m_hat / (sqrt(v_hat) + eps)``."""
  m: Leaves | None = None
  v: Leaves | None = None

  def update(g: Leaves, t: int) -> Leaves:
    nonlocal m, v
    m = [b1 * mi + (1 - b1) * gi for gi, mi in zip(g, m or [0.0] * len(g), strict=True)]
    v = [b2 * vi + (1 - b2) * gi**2 for gi, vi in zip(g, v or [0.0] * len(g), strict=True)]
    return [
      -lr * (mi / (1 - b1**t)) / (np.sqrt(vi / (1 - b2**t)) + eps)
      for mi, vi in zip(m, v, strict=True)
    ]

  return update


def adagrad(lr: float, initial_accumulator: float = 0.1, eps: float = 1e-7) -> Update:
  """``s = s + g^2`` (from ``initial_accumulator``); ``u = -lr g / sqrt(s + eps)``."""
  s: Leaves | None = None

  def update(g: Leaves, t: int) -> Leaves:
    nonlocal s
    del t
    s = [si + gi**2 for gi, si in zip(g, s or [initial_accumulator] * len(g), strict=True)]
    return [-lr * gi / np.sqrt(si + eps) for gi, si in zip(g, s, strict=True)]

  return update


# ---------------------------------------------------------------------------------------------
# Algorithm 1, and the baselines it is compared with.


def base_run(y0: Sequence[Any], grad: Callable[..., Leaves], update: Update, steps: int) -> list:
  """The base optimizer alone: ``y_{t+1} = y_t + u_t`` with the gradient at ``y_t``."""
  y, ys = _f64(y0), []
  for t in range(1, steps + 1):
    y = [yi + ui for yi, ui in zip(y, update(grad(*y), t), strict=True)]
    ys.append(y)
  return ys


def rsgd(
  x0: Sequence[Any],
  grad: Callable[..., Leaves],
  update: Update,
  scheme: Scheme | None,
  steps: int,
) -> tuple[list, list]:
  """Algorithm 1. Returns the points ``x_t`` and ``y_t`` after each step, ``r_0 = 0``.

  The gradient is taken at the reference point ``y_t = x_t - r_t``; the half step
  ``x_{t+1/2} = y_t + u_t`` is the base optimizer's new iterate; ``p_t = R(x_t - x_{t+1/2})``,
  ``x_{t+1} = x_t - p_t`` and ``r_{t+1} = x_t - x_{t+1/2} - p_t``. With ``scheme=None`` there is no
  residual and ``x = y``.
  """
  x = _f64(x0)
  r = [np.zeros_like(v) for v in x]
  xs, ys = [], []
  for t in range(1, steps + 1):
    y = [xi - ri for xi, ri in zip(x, r, strict=True)]
    x_half = [yi + ui for yi, ui in zip(y, update(grad(*y), t), strict=True)]
    delta = [xi - xh for xi, xh in zip(x, x_half, strict=True)]
    p = scheme(delta) if scheme is not None else delta
    r = [di - pi for di, pi in zip(delta, p, strict=True)]
    x = [xi - pi for xi, pi in zip(x, p, strict=True)]
    xs.append(x)
    ys.append([xi - ri for xi, ri in zip(x, r, strict=True)])
  return xs, ys


def error_feedback(
  x0: Sequence[Any],
  grad: Callable[..., Leaves],
  update: Update,
  scheme: Scheme,
  steps: int,
  memory: bool = True,
) -> list:
  """EF-SignSGD's memory (``memory=True``) or plain compression: the points ``x_t`` per step.

  The gradient is taken at ``x_t`` itself: ``p_t = R(e_t - u_t)``, ``x_{t+1} = x_t - p_t``,
  ``e_{t+1} = e_t - u_t - p_t``; without memory ``e = 0`` always (SignSGD: ``p_t = R(-u_t)``).
  """
  x = _f64(x0)
  e = [np.zeros_like(v) for v in x]
  xs = []
  for t in range(1, steps + 1):
    corrected = [ei - ui for ei, ui in zip(e, update(grad(*x), t), strict=True)]
    p = scheme(corrected)
    if memory:
      e = [ci - pi for ci, pi in zip(corrected, p, strict=True)]
    x = [xi - pi for xi, pi in zip(x, p, strict=True)]
    xs.append(x)
  return xs


def iterate_average(points: Sequence[Leaves], start: int | None) -> list:
  """What ASGD (RASGD with RSGD points) evaluates after each step ``t = 0, 1, ...``.

  Averaging switched on before step ``start``: the uniform mean of ``points[start..t]``; before any
  averaged step (or with ``start=None``), the current point itself.
  """
  expected, averaged = [], []
  for t, point in enumerate(points):
    if start is not None and t >= start:
      averaged.append(point)
    if averaged:
      expected.append([np.mean([p[i] for p in averaged], axis=0) for i in range(len(point))])
    else:
      expected.append(list(point))
  return expected


# ---------------------------------------------------------------------------------------------
# Compressed data-parallel exchange in two phases (a compressed all-reduce with worker and server
# error feedback, as in 1-bit Adam's compressed all-reduce). Unlike the rest of this file it keeps
# the leaves' dtypes where a device would round: every value a device holds or sends is rounded
# into its leaf's dtype (float32 or bfloat16), sums are exact (float64), scales are float32.


def _pieces_of(size: int, devices: int) -> int:
  return -(-size // devices)


def _as_rows(leaf: np.ndarray, devices: int) -> np.ndarray:
  """A leaf flattened, zero-padded to a multiple of ``devices`` and cut into ``devices`` rows."""
  piece = _pieces_of(leaf.size, devices)
  flat = np.zeros(devices * piece, np.float64)
  flat[: leaf.size] = np.asarray(leaf, np.float64).reshape(-1)
  return flat.reshape(devices, piece)


def _sign_compress(
  rows: Sequence[np.ndarray], sizes: list[int], per_leaf: bool, block_size: int | None = None
) -> Leaves:
  """Scaled sign of leaves given as ``(devices, piece)`` rows (zero padding): ``+-mean |v|``.

  ``v >= 0`` is sent as ``+scale`` (one bit an entry); the scale is float32, ``mean |v|`` over the
  leaf's own entries (or over the tree's with ``per_leaf=False``). With ``block_size=B`` each row
  is cut into blocks of ``B`` entries (the last one shorter), each scaled by ``mean |v|`` over its
  entries that belong to the leaf (a block of padding alone gets scale 0).
  """
  if block_size is not None:
    out = []
    for r, d in zip(rows, sizes, strict=True):
      devices, n = r.shape
      inside = np.arange(devices * n).reshape(devices, n) < d
      scales = np.zeros_like(r)
      for j in range(devices):
        for start in range(0, n, block_size):
          block = slice(start, start + block_size)
          count = inside[j, block].sum()
          scales[j, block] = np.float32(np.abs(r[j, block]).sum() / max(count, 1))
      out.append(scales * np.where(r >= 0, 1.0, -1.0))
    return out
  sums = [np.abs(r).sum() for r in rows]
  if per_leaf:
    scales = [np.float32(s / max(d, 1)) for s, d in zip(sums, sizes, strict=True)]
  else:
    scales = [np.float32(sum(sums) / max(sum(sizes), 1))] * len(rows)
  return [np.float64(s) * np.where(r >= 0, 1.0, -1.0) for s, r in zip(scales, rows, strict=True)]


def _top_k_compress(rows: Sequence[np.ndarray], fraction: float, per_leaf: bool) -> Leaves:
  """Top-k of each device row: of each leaf's piece (``per_leaf``) or of the whole chunk.

  The chunk of a row is the concatenation of every leaf's piece in that row; ``k`` is
  ``top_k_count(fraction, n)`` of the ``n`` entries selected from, zero padding included (a fixed
  count per row); ties go to the lower index in the chunk.
  """
  if per_leaf:
    out = []
    for r in rows:
      k = top_k_count(fraction, r.shape[1])
      out.append(np.stack([keep_top(row, k) for row in r]))
    return out
  chunks = np.concatenate(rows, axis=1)
  k = top_k_count(fraction, chunks.shape[1])
  kept = np.stack([keep_top(row, k) for row in chunks])
  return np.split(kept, np.cumsum([r.shape[1] for r in rows])[:-1], axis=1)


def _exact_mean(step: Sequence[Sequence[Any]], leaf: int) -> np.ndarray:
  """The exact mean over workers of one leaf, rounded once into the leaf's dtype, as float64."""
  dtype = np.asarray(step[0][leaf]).dtype
  total = sum(np.asarray(g[leaf], np.float64) for g in step)
  return np.asarray(total / len(step), dtype).astype(np.float64)


def two_phase_exchange(
  grads: Sequence[Sequence[Sequence[Any]]],
  scheme: str,
  *,
  per_leaf: bool = True,
  fraction: float = 0.01,
  error_feedback: bool = True,
  block_size: int | None = None,
  exact_steps: int = 0,
) -> tuple[list, list, list]:
  """The two-phase compressed mean over steps; ``grads[t][i]`` is worker ``i``'s leaves at step ``t``.

  With ``P`` workers, every leaf is flattened, zero-padded to a multiple of ``P`` and cut into ``P``
  pieces; worker ``j`` serves piece ``j`` of every leaf (its chunk). One step:

  1. worker ``i``: ``v_i = g_i + e_i``, ``c_i = R(v_i)`` (top-k: of each piece of each chunk),
     ``e_i = v_i - c_i``; it sends chunk ``j`` of ``c_i`` to worker ``j``;
  2. server ``j``: ``w_j = mean_i (c_i)_j + s_j``, ``q_j = R(w_j)`` (scaled sign: with the scale of
     the whole leaf, ``mean |w|`` over every server's piece), ``s_j = w_j - q_j``; it sends ``q_j``
     to everyone, and the update is the concatenation of the ``q_j``, cut to each leaf's size.

  ``scheme`` is ``"sign"`` or ``"top_k"``. Without error feedback ``e`` and ``s`` stay zero. With
  ``block_size`` (sign), both compressions scale each block of ``block_size`` entries of each piece
  on its own. The first ``exact_steps`` steps return the exact mean and leave ``e`` and ``s`` as
  they are. Returns the update per step (leaves, float64 of the leaves' dtype values), the
  workers' memories ``e[i]`` (leaves) and the servers' ``s[j]`` (one ``piece`` vector per leaf)
  after the last step.
  """
  workers = len(grads[0])
  first = [np.asarray(g) for g in grads[0][0]]
  dtypes = [g.dtype for g in first]
  sizes = [g.size for g in first]
  pieces = [_pieces_of(d, workers) for d in sizes]

  def rounded(rows: Leaves) -> Leaves:
    return [np.asarray(r, dt).astype(np.float64) for r, dt in zip(rows, dtypes, strict=True)]

  def compress(rows: Leaves) -> Leaves:
    if scheme == "sign":
      return rounded(_sign_compress(rows, sizes, per_leaf, block_size))
    return rounded(_top_k_compress(rows, fraction, per_leaf))

  valid = [
    np.arange(workers * n).reshape(workers, n) < d for n, d in zip(pieces, sizes, strict=True)
  ]
  e = [[np.zeros((workers, n)) for n in pieces] for _ in range(workers)]  # in rows, like the pieces
  s = [np.zeros((workers, n)) for n in pieces]  # row j: server j's piece
  updates = []
  for t, step in enumerate(grads):
    if t < exact_steps:
      updates.append([_exact_mean(step, leaf) for leaf in range(len(sizes))])
      continue
    sent = []
    for i, g in enumerate(step):
      rows = [_as_rows(leaf, workers) for leaf in g]
      v = rounded([r + m for r, m in zip(rows, e[i], strict=True)]) if error_feedback else rows
      c = compress(v)
      if error_feedback:
        e[i] = rounded([np.where(ok, a - b, 0.0) for ok, a, b in zip(valid, v, c, strict=True)])
      sent.append(c)
    totals = [sum(c[leaf] for c in sent) for leaf in range(len(sizes))]
    mean = rounded([np.where(ok, t / workers, 0.0) for ok, t in zip(valid, totals, strict=True)])
    w = rounded([m + r for m, r in zip(mean, s, strict=True)]) if error_feedback else mean
    q = [np.where(ok, x, 0.0) for ok, x in zip(valid, compress(w), strict=True)]
    if error_feedback:
      s = rounded([a - b for a, b in zip(w, q, strict=True)])
    updates.append(
      [x.reshape(-1)[:d].reshape(np.shape(g)) for x, d, g in zip(q, sizes, first, strict=True)]
    )
  memories = [
    [m.reshape(-1)[:d].reshape(np.shape(g)) for m, d, g in zip(e_i, sizes, first, strict=True)]
    for e_i in e
  ]
  return updates, memories, s


def all_gather_exchange(
  grads: Sequence[Sequence[Sequence[Any]]],
  scheme: str,
  *,
  per_leaf: bool = True,
  fraction: float = 0.01,
  error_feedback: bool = True,
  block_size: int | None = None,
  exact_steps: int = 0,
) -> tuple[list, list]:
  """The all-gather compressed mean over steps; ``grads[t][i]`` is worker ``i``'s leaves at step ``t``.

  Worker ``i``: ``v_i = g_i + e_i`` (rounded into the leaf's dtype), ``c_i = R(v_i)`` with ``R``
  applied to the whole leaf (scaled sign: one float32 scale a leaf, a tree, or a block of
  ``block_size`` entries of the flattened leaf; top-k: ties toward the lower index), rounded into
  the leaf's dtype, ``e_i = v_i - c_i``; the update is ``mean_i c_i`` (exact sum, rounded once).
  The first ``exact_steps`` steps return the exact mean and leave ``e`` as it is. Returns the
  update per step and the workers' memories after the last step (float64 of the dtype's values).
  """
  workers = len(grads[0])
  first = [np.asarray(g) for g in grads[0][0]]
  dtypes = [g.dtype for g in first]

  def rounded(leaves: Leaves) -> Leaves:
    return [np.asarray(v, dt).astype(np.float64) for v, dt in zip(leaves, dtypes, strict=True)]

  def compress(leaves: Leaves) -> Leaves:
    if scheme == "top_k":
      return rounded(top_k(fraction, per_leaf)(leaves))
    if block_size is None:
      scales = [np.abs(v).sum() / v.size for v in leaves]
      if not per_leaf:
        scales = [sum(np.abs(v).sum() for v in leaves) / sum(v.size for v in leaves)] * len(leaves)
      return rounded(
        [np.float32(c) * np.where(v >= 0, 1.0, -1.0) for c, v in zip(scales, leaves, strict=True)]
      )
    out = []
    for v in leaves:
      flat = v.reshape(-1)
      scale = np.zeros_like(flat)
      for start in range(0, flat.size, block_size):
        block = slice(start, start + block_size)
        scale[block] = np.float32(np.abs(flat[block]).mean())
      out.append((scale * np.where(flat >= 0, 1.0, -1.0)).reshape(v.shape))
    return rounded(out)

  e = [[np.zeros(np.shape(g)) for g in first] for _ in range(workers)]
  updates = []
  for t, step in enumerate(grads):
    if t < exact_steps:
      updates.append([_exact_mean(step, leaf) for leaf in range(len(first))])
      continue
    sent = []
    for i, g in enumerate(step):
      v = rounded(_f64(g))
      if error_feedback:
        v = rounded([a + m for a, m in zip(v, e[i], strict=True)])
      c = compress(v)
      if error_feedback:
        e[i] = rounded([a - b for a, b in zip(v, c, strict=True)])
      sent.append(c)
    updates.append(rounded([sum(c[leaf] for c in sent) / workers for leaf in range(len(first))]))
  return updates, e


def with_exact_leaves(
  exchange: Callable[..., tuple], grads: Sequence[Sequence[Sequence[Any]]], exact_below: int, **kw
) -> tuple[list, list, list[int]]:
  """Runs ``exchange`` on the leaves of ``exact_below`` entries or more; the others get the mean.

  Leaves with fewer than ``exact_below`` entries are averaged exactly at every step and keep no
  memory; ``exchange`` (:func:`two_phase_exchange` or :func:`all_gather_exchange`) sees only the
  other leaves, as if the tree held no more. Returns the update per step (every leaf), the
  exchange's other results (memories of the compressed leaves only), and the compressed leaves'
  positions in the tree.
  """
  sizes = [np.size(g) for g in grads[0][0]]
  kept = [i for i, d in enumerate(sizes) if d >= exact_below]
  sub = [[[g[i] for i in kept] for g in step] for step in grads]
  updates, *rest = exchange(sub, **kw)
  full = []
  for step, update in zip(grads, updates, strict=True):
    row = [_exact_mean(step, leaf) for leaf in range(len(sizes))]
    for i, u in zip(kept, update, strict=True):
      row[i] = u
    full.append(row)
  return full, rest, kept


def memory_ratio(grads: Sequence[Sequence[Any]], memories: Sequence[Sequence[Any]]) -> float:
  """``max_i ||e_i|| / ||g_i + e_i||`` (norms over all leaves of worker ``i``; 0 when both vanish)."""
  ratios = []
  for g, e in zip(grads, memories, strict=True):
    e_norm = np.sqrt(sum(np.sum(np.asarray(m, np.float64) ** 2) for m in e))
    v_norm = np.sqrt(
      sum(
        np.sum((np.asarray(a, np.float64) + np.asarray(m, np.float64)) ** 2)
        for a, m in zip(g, e, strict=True)
      )
    )
    ratios.append(e_norm / v_norm if v_norm > 0 else 0.0)
  return max(ratios)
