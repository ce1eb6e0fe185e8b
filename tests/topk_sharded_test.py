"""Top-k and scaled sign on leaves sharded over eight CPU devices, against a NumPy stable sort.

The root conftest gives the test process eight CPU devices. Each layout (Explicit or Auto mesh axes;
a leaf sharded along its first dimension, its second, or both) is compiled once, as one residual step
holding a per-leaf and a global top-k, and the test reads everything off that one program: the kept
sets (from the new residuals), the residuals' shardings, and the compiled HLO's collectives, which
must move counters and scalars only, never a gathered leaf.
"""

import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd
from rsgd_optax import _topk

FRACTION = 0.1
SPECS = {"dim0": P("data", None), "dim1": P(None, "data"), "both": P("data", "model")}
KINDS = {"explicit": AxisType.Explicit, "auto": AxisType.Auto}
# The largest all-reduce a selection may make: one pass's counters (2**16 int32).
MAX_COUNTERS = 1 << 16


def _mesh(kind: str) -> jax.sharding.Mesh:
  cpus = jax.devices("cpu")
  assert len(cpus) == 8, "the root conftest gives the test process eight CPU devices"
  return jax.make_mesh((4, 2), ("data", "model"), axis_types=(KINDS[kind],) * 2, devices=cpus)


def _host_tree() -> dict[str, np.ndarray]:
  """Grad-like leaves without zeros: 'a' and 'c' have few magnitudes, so every threshold is tied."""
  rng = np.random.default_rng(0)
  nonzero = np.array([-3.0, -2.0, -1.0, 1.0, 2.0, 3.0], np.float32)
  return {
    "a": rng.choice(nonzero, size=(16, 24)),
    "b": rng.normal(size=(8, 32)).astype(np.float32),
    "c": rng.choice(nonzero, size=(24,)),  # replicated, beside the sharded leaves
  }


reference_kept = reference.kept_mask


def _collectives(hlo: str) -> list[tuple[str, str]]:
  """(op, result type) of every cross-device op in a compiled HLO text."""
  pattern = (
    r"= (.+?) (all-gather|all-reduce|all-to-all|collective-permute|reduce-scatter)(?:-start)?\("
  )
  return [(m.group(2), m.group(1)) for m in re.finditer(pattern, hlo)]


def _entries(result_type: str) -> list[int]:
  """Entries of each array in an HLO result type such as ``s32[2048]{0}`` or ``(f32[], f32[])``."""
  return [
    int(np.prod([int(d) for d in dims.split(",") if d]))
    for dims in re.findall(r"\[([\d,]*)\]", result_type)
  ]


@functools.cache
def _run(kind: str, layout: str, schemes: tuple[str, ...]):
  """One compiled step of chain(sgd(1), residual(scheme) for each scheme), on zero state.

  With ``lr = 1``, zero params and zero residuals, each scheme sees ``v = grads``, and its new
  residual is ``v - R(v)``: zero exactly where top-k kept an entry.
  """
  mesh = _mesh(kind)
  make = {
    "topk": lambda: rsgd.top_k(FRACTION),
    "topk_global": lambda: rsgd.top_k(FRACTION, per_leaf=False),
    "sign": lambda: rsgd.scaled_sign(),
    "sign_global": lambda: rsgd.scaled_sign(per_leaf=False),
  }
  tx = optax.chain(optax.sgd(1.0), *(rsgd.residual(make[name]()) for name in schemes))
  host = _host_tree()
  specs = {"a": SPECS[layout], "b": SPECS[layout], "c": P()}
  shardings = {name: NamedSharding(mesh, spec) for name, spec in specs.items()}
  grads = {name: jax.device_put(value, shardings[name]) for name, value in host.items()}
  params = jax.tree.map(jnp.zeros_like, grads)

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  with jax.set_mesh(mesh):
    state = tx.init(params)
    compiled = jax.jit(step).lower(params, state, grads).compile()
    _, new_state = compiled(params, state, grads)
  residuals = {name: new_state[i + 1].residual for i, name in enumerate(schemes)}
  return host, shardings, residuals, compiled.as_text()


LAYOUTS = [(kind, layout) for kind in KINDS for layout in SPECS]


@pytest.mark.parametrize(("kind", "layout"), LAYOUTS)
def test_top_k_on_a_sharded_tree_keeps_the_stable_sort_set_and_gathers_nothing(kind, layout):
  host, shardings, residuals, hlo = _run(kind, layout, ("topk", "topk_global"))
  # The kept sets, per leaf and over the tree, ties included.
  for name, x in host.items():
    kept = np.asarray(residuals["topk"][name]).reshape(-1) == 0
    k = max(1, round(FRACTION * x.size))
    np.testing.assert_array_equal(kept, reference_kept(x.reshape(-1), k), err_msg=name)
  flat = np.concatenate([host[name].reshape(-1) for name in sorted(host)])
  kept = np.concatenate(
    [np.asarray(residuals["topk_global"][name]).reshape(-1) == 0 for name in sorted(host)]
  )
  np.testing.assert_array_equal(kept, reference_kept(flat, round(FRACTION * flat.size)))
  # The residuals keep the params' sharding.
  for residual in residuals.values():
    for name, leaf in residual.items():
      assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (name, leaf.sharding)
  # Only counters cross devices: no gather of any kind, and every all-reduce at most one pass's
  # counters (the sharded leaves hold 384 and 256 entries, fewer than the counters of a 16-bit pass,
  # so the size bound alone would not show a gathered leaf: the gather ban does).
  collectives = _collectives(hlo)
  assert collectives, "the sharded selection must all-reduce its counters"
  for op, result in collectives:
    assert op == "all-reduce", (op, result)
    assert all(n <= MAX_COUNTERS for n in _entries(result)), result


@pytest.mark.parametrize(("kind", "layout"), LAYOUTS)
def test_scaled_sign_on_a_sharded_tree_all_reduces_scalars_only(kind, layout):
  host, shardings, residuals, hlo = _run(kind, layout, ("sign", "sign_global"))
  total = sum(np.abs(x.astype(np.float64)).sum() for x in host.values())
  size = sum(x.size for x in host.values())
  for name, x in host.items():
    for scheme, scale in (
      ("sign", np.abs(x.astype(np.float64)).mean()),
      ("sign_global", total / size),
    ):
      moved = x - np.asarray(residuals[scheme][name], np.float64)
      np.testing.assert_allclose(moved, scale * np.sign(x), rtol=1e-5, err_msg=(scheme, name))
      leaf = residuals[scheme][name]
      assert leaf.sharding.is_equivalent_to(shardings[name], leaf.ndim), (scheme, name)
  collectives = _collectives(hlo)
  assert collectives, "the sharded leaves' sums must be all-reduced"
  for op, result in collectives:
    assert op == "all-reduce" and set(_entries(result)) == {1}, (op, result)


@pytest.mark.parametrize(
  ("kind", "spec", "ways"), [("explicit", P("data", "model"), 8), ("auto", P(None, "data"), 4)]
)
def test_top_k_temporaries_scale_with_the_shard(kind, spec, ways):
  # A 512 KiB leaf split 8 or 4 ways: the step's temporaries per device stay within a few shards.
  # Gathering the leaf for the selection took about 2.5 leaves (1.3 MiB) per device.
  mesh = _mesh(kind)
  sharding = NamedSharding(mesh, spec)
  shape = (256, 512)
  grads = jax.device_put(jax.random.normal(jax.random.key(0), shape), sharding)
  params = jnp.zeros(shape, jnp.float32, device=sharding)
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_topk(0.01))

  def step(params, state, grads):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  with jax.set_mesh(mesh):
    state = tx.init(params)
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, state, grads).compile()
  shard_bytes = 4 * int(np.prod(shape)) // ways
  temp = compiled.memory_analysis().temp_size_in_bytes
  print(f"temporaries {temp} bytes per device, shards of {shard_bytes} bytes")
  assert temp <= 3 * shard_bytes + (1 << 16), (temp, shard_bytes)
  assert all(op == "all-reduce" for op, _ in _collectives(compiled.as_text()))


def _data(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if kind == "normal":
    return rng.normal(size=shape).astype(np.float32)
  if kind == "ties":  # few magnitudes, zeros among them: every threshold is tied
    return rng.integers(-3, 4, size=shape).astype(np.float32)
  if kind == "all_equal":
    return np.full(shape, -1.5, np.float32)
  return np.zeros(shape, np.float32)


def test_in_place_selection_of_several_rows_matches_a_stable_sort():
  # The in-place selection on one device, rows of different sizes, shapes and data side by side in
  # one program (its counters, one row per leaf, and its tie cut are the sharded path's).
  cases = [
    ("normal", (16, 24), 38),
    ("ties", (8, 32), 26),
    ("all_equal", (5, 3, 7), 50),
    ("zeros", (40,), 3),
    ("ties", (300,), 299),
    ("ties", (2, 2049), 1),
  ]
  leaves = [_data(kind, shape, seed) for seed, (kind, shape, _) in enumerate(cases)]
  ks = [k for _, _, k in cases]
  rows = list(range(len(leaves)))
  select = jax.jit(lambda ls: _topk._select(ls, rows, [0] * len(ls), ks, _topk._Layout.OWN_SHAPE))
  for out, x, k in zip(select([jnp.asarray(x) for x in leaves]), leaves, ks, strict=True):
    kept = reference_kept(x.reshape(-1), k)
    np.testing.assert_array_equal(np.asarray(out).reshape(-1), np.where(kept, x.reshape(-1), 0))


def test_in_place_selection_across_leaves_matches_a_stable_sort():
  # One row over several leaves (the global top-k), with offsets: ties go to the earlier leaf.
  leaves = [_data("ties", (10,), 1), _data("ties", (4, 5), 2), _data("normal", (3, 30), 3)]
  offsets = [0, 10, 30]
  flat = np.concatenate([x.reshape(-1) for x in leaves])
  for k in (1, 60):
    out = jax.jit(
      lambda ls, k=k: _topk._select(ls, [0, 0, 0], offsets, [k], _topk._Layout.OWN_SHAPE)
    )([jnp.asarray(x) for x in leaves])
    kept = reference_kept(flat, k)
    actual = np.concatenate([np.asarray(o).reshape(-1) for o in out])
    np.testing.assert_array_equal(actual, np.where(kept, flat, 0))
