"""compressed_mean's optional recipe on eight CPU devices against the NumPy reference.

The options (each off by default): ``exact_below`` (small leaves averaged exactly, no memory),
``exact_steps`` (an exact warm-up, memories untouched), block-wise scales for scaled sign
(``scaled_sign(block_size=...)``), and the diagnostic :func:`rsgd_optax.memory_ratio`. The reference
(``reference.all_gather_exchange``, ``reference.two_phase_exchange`` and
``reference.with_exact_leaves``) is written from the algorithm and never calls the library. Each
configuration is compiled once, as one exchange step that also returns the memory ratio of the state
it received, and run for three steps with its memories carried.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import reference
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd

DEVICES = 8
STEPS = 3
FRACTION = 0.3
# Sorted: the order of jax's dict leaves. Each device serves pieces of 1, 1 and 4 entries of them;
# device 7's piece of "w" holds 2 entries and 2 of padding (a block of 3 there holds 2 entries).
SHAPES = {"b": (6,), "s": (), "w": (5, 6)}


def _gradients(dtype, seed=0):
  """grads[t][i]: worker i's leaves at step t; heavy tails in "w" so blocks differ from the leaf."""
  rng = np.random.default_rng(seed)
  grads = []
  for _ in range(STEPS):
    step = []
    for _ in range(DEVICES):
      leaves = [rng.normal(size=shape) * (1 + j) for j, shape in enumerate(SHAPES.values())]
      leaves[2] = leaves[2] * np.where(rng.random(SHAPES["w"]) < 0.1, 20.0, 1.0)
      step.append([leaf.astype(np.float32).astype(dtype) for leaf in leaves])
    grads.append(step)
  grads[0][0][0][:2] = 0  # exact zeros: sent as +scale
  return grads


def _mesh():
  cpus = jax.devices("cpu")
  assert len(cpus) == DEVICES, "the root conftest gives the test process eight CPU devices"
  return jax.make_mesh((DEVICES,), ("data",), axis_types=(AxisType.Explicit,), devices=cpus)


def _run(tx, grads, error_feedback):
  """Runs ``tx`` over the steps; every device's output per step, the state, and the last ratio."""
  mesh = _mesh()
  dtype = grads[0][0][0].dtype
  params = {name: jnp.zeros(shape, dtype) for name, shape in SHAPES.items()}
  with jax.set_mesh(mesh):
    state = tx.init(params)
    specs = rsgd.memory_specs(state, "data")

    @jax.jit
    @functools.partial(
      jax.shard_map, mesh=mesh, in_specs=(P("data"), specs), out_specs=(P(), specs, P())
    )
    def step(stacked, state):
      grads = jax.tree.map(lambda g: g[0], stacked)
      ratio = rsgd.memory_ratio(state, grads, "data") if error_feedback else jnp.zeros([])
      updates, state = tx.update(grads, state)
      return updates, state, ratio

    outputs = []
    for step_grads in grads:
      stacked = {
        name: jax.device_put(
          np.stack([g[leaf] for g in step_grads]), NamedSharding(mesh, P("data"))
        )
        for leaf, name in enumerate(SHAPES)
      }
      out, state, ratio = step(stacked, state)
      outputs.append(out)
  return outputs, state, float(ratio)


def _f32(x):
  return np.asarray(x).astype(np.float32)


CASES = {
  # id: (exchange, scheme, options, dtype, error_feedback)
  "all_gather-sign-exact_below": ("all_gather", "sign", {"exact_below": 7}, np.float32, True),
  "two_phase-top_k-exact_below": ("two_phase", "top_k", {"exact_below": 7}, np.float32, True),
  "all_gather-top_k-exact_steps": ("all_gather", "top_k", {"exact_steps": 1}, np.float32, True),
  "two_phase-sign-exact_steps": ("two_phase", "sign", {"exact_steps": 1}, np.float32, True),
  "two_phase-sign-exact_steps-noef": ("two_phase", "sign", {"exact_steps": 2}, np.float32, False),
  "all_gather-sign-blocks": ("all_gather", "sign", {"block_size": 4}, np.float32, True),
  "two_phase-sign-blocks": ("two_phase", "sign", {"block_size": 3}, np.float32, True),
  "all_gather-sign-all": (
    "all_gather",
    "sign",
    {"block_size": 3, "exact_below": 2, "exact_steps": 1},
    np.float32,
    True,
  ),
  "two_phase-sign-all-bfloat16": (
    "two_phase",
    "sign",
    {"block_size": 3, "exact_below": 2, "exact_steps": 1},
    ml_dtypes.bfloat16,
    True,
  ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_eight_devices_match_the_numpy_reference(case):
  exchange, scheme, options, dtype, error_feedback = CASES[case]
  options = dict(options)
  block_size = options.pop("block_size", None)
  exact_below = options.get("exact_below", 0)
  exact_steps = options.get("exact_steps", 0)
  compressor = rsgd.scaled_sign(block_size=block_size) if scheme == "sign" else rsgd.top_k(FRACTION)
  tx = rsgd.compressed_mean(
    compressor, "data", exchange=exchange, error_feedback=error_feedback, **options
  )
  grads = _gradients(dtype)
  outputs, state, ratio = _run(tx, grads, error_feedback)

  run = reference.two_phase_exchange if exchange == "two_phase" else reference.all_gather_exchange
  kw = {
    "scheme": scheme,
    "fraction": FRACTION,
    "error_feedback": error_feedback,
    "block_size": block_size,
    "exact_steps": exact_steps,
  }
  updates, rest, kept = reference.with_exact_leaves(run, grads, exact_below, **kw)
  # float32: values up to about 40 (heavy tails), so memories v - c carry rounding of ulp(40).
  tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == np.float32 else {"rtol": 1e-2, "atol": 1e-2}
  for t, (out, update) in enumerate(zip(outputs, updates, strict=True)):
    for leaf, name in enumerate(SHAPES):
      assert out[name].dtype == dtype and out[name].shape == SHAPES[name]
      np.testing.assert_allclose(_f32(out[name]), update[leaf], **tolerance, err_msg=f"{name} {t}")

  if exact_steps:
    assert isinstance(state, rsgd.ExactStepsState) and int(state.count) == STEPS
    state = state.inner
  if not error_feedback:
    assert state == optax.EmptyState()
    return
  expected_type = rsgd.TwoPhaseMeanState if exchange == "two_phase" else rsgd.CompressedMeanState
  assert type(state) is expected_type
  names = list(SHAPES)
  for leaf, name in enumerate(names):
    if leaf not in kept:
      assert isinstance(state.memory[name], optax.MaskedNode), name
      if exchange == "two_phase":
        assert isinstance(state.server_memory[name], optax.MaskedNode), name
  memories = rest[0]
  for position, leaf in enumerate(kept):
    name = names[leaf]
    memory = state.memory[name]
    assert memory.shape == (DEVICES, *SHAPES[name]) and memory.dtype == dtype
    expected = np.stack([m[position] for m in memories])
    np.testing.assert_allclose(_f32(memory), expected, **tolerance, err_msg=name)
    if exchange == "two_phase":
      np.testing.assert_allclose(
        _f32(state.server_memory[name]), rest[1][position], **tolerance, err_msg=name
      )
  # Warm-up steps leave the memories as they were: after them the memory is not zero only
  # because a compressed step followed.
  assert np.abs(_f32(state.memory["w"])).max() > 0

  # The ratio the last step saw: the memories after the steps before it, and its gradients.
  _, before, _ = reference.with_exact_leaves(run, grads[:-1], exact_below, **kw)
  last = [[g[leaf] for leaf in kept] for g in grads[-1]]
  expected_ratio = reference.memory_ratio(last, before[0])
  assert expected_ratio > 0.1
  np.testing.assert_allclose(ratio, expected_ratio, rtol=1e-2 if dtype != np.float32 else 1e-5)


def test_blocks_of_one_leaf_contract_better_than_one_scale_on_a_heavy_tailed_leaf():
  """What the blocks are for: ``||v - R(v)||`` smaller than with one scale when a few entries
  dominate (the reference's blockwise R, against its one-scale R)."""
  v = np.ones(64)
  v[:4] = 100.0  # one block of large entries
  leaf = [v.astype(np.float32)]
  one = reference.scaled_sign(True)(leaf)[0]
  blocks = reference.scaled_sign(True, block_size=4)(leaf)[0]
  np.testing.assert_allclose(blocks, v)  # each block is constant: sent exactly
  assert np.linalg.norm(v - one) > 0.9 * np.linalg.norm(v)
  library = rsgd.scaled_sign(block_size=4)({"v": jnp.asarray(leaf[0])})["v"]
  np.testing.assert_allclose(library, blocks, rtol=1e-6)


def test_memory_ratio_without_error_feedback_memory_says_so():
  state = rsgd.ExactStepsState(jnp.zeros([], jnp.int32), optax.EmptyState())
  with pytest.raises(ValueError, match="no error-feedback memory"):
    rsgd.memory_ratio((optax.EmptyState(), state), {"w": jnp.zeros(3)}, "data")


def test_memory_ratio_outside_shard_map_says_where_to_call_it():
  state = rsgd.CompressedMeanState({"w": jnp.zeros([1, 3])})
  with pytest.raises(ValueError, match=r"memory_ratio runs inside jax\.shard_map"):
    rsgd.memory_ratio(state, {"w": jnp.zeros(3)}, "data")


def test_memory_specs_replicate_the_step_count_and_resize_memory_keeps_it():
  inner = rsgd.TwoPhaseMeanState({"w": jnp.ones([2, 3])}, {"w": jnp.ones([2, 2])})
  state = rsgd.ExactStepsState(jnp.asarray(5, jnp.int32), inner)
  specs = rsgd.memory_specs(state, "data")
  assert specs == rsgd.ExactStepsState(
    P(), rsgd.TwoPhaseMeanState({"w": P("data")}, {"w": P("data")})
  )
  resized = rsgd.resize_memory(state, 4)
  assert resized.inner.memory["w"].shape == (4, 3) and int(resized.count) == 5


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"exact_below": -1}, "`exact_below` must be a non-negative integer"),
    ({"exact_below": 2.5}, "`exact_below` must be a non-negative integer"),
    ({"exact_steps": True}, "`exact_steps` must be a non-negative integer"),
    ({"exact_steps": -3}, "`exact_steps` must be a non-negative integer"),
  ],
)
def test_bad_recipe_arguments_are_refused_when_built(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rsgd.compressed_mean(rsgd.scaled_sign(), "data", **kwargs)


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"block_size": 0}, "`block_size` must be a positive integer"),
    ({"block_size": 2.0}, "`block_size` must be a positive integer"),
    ({"block_size": 4, "per_leaf": False}, "needs per_leaf=True"),
  ],
)
def test_bad_block_sizes_are_refused_when_built(kwargs, message):
  with pytest.raises(ValueError, match=message):
    rsgd.scaled_sign(**kwargs)
