"""compressed_mean's two-phase exchange on eight CPU devices against the NumPy reference.

``reference.two_phase_exchange`` is written from the algorithm (worker and server memories, pieces of
each leaf, top-k per piece, ties toward the lower index) and never calls the library. Each
configuration is compiled once, as one exchange step over the mesh, and run for several steps with
its memories carried; the test compares what every device returned (the same update on all of
them), every worker's memory and every server's memory after the last step.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
import reference
from compressed_test import DEVICES, SHAPES, _gradients, _mesh
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd

FRACTION = 0.3


def _run(tx, grads, mesh, memory_axis):
  """Runs ``tx`` over the steps (one row of ``grads`` a device); every device's output per step."""
  dtype = grads[0][0][0].dtype
  params = {name: jnp.zeros(shape, dtype) for name, shape in SHAPES.items()}
  all_axes = P(tuple(mesh.axis_names))
  with jax.set_mesh(mesh):
    state = tx.init(params)
    specs = rsgd.memory_specs(state, memory_axis)

    @jax.jit
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(all_axes, specs), out_specs=(P(), specs))
    def step(stacked, state):
      return tx.update(jax.tree.map(lambda g: g[0], stacked), state)

    outputs = []
    for step_grads in grads:
      stacked = {
        name: jax.device_put(np.stack([g[leaf] for g in step_grads]), NamedSharding(mesh, all_axes))
        for leaf, name in enumerate(SHAPES)
      }
      out, state = step(stacked, state)
      outputs.append(out)
  return outputs, state


def _f32(x):
  return np.asarray(x).astype(np.float32)


def _check(outputs, state, expected, error_feedback, dtype, workers):
  updates, memories, servers = expected
  tolerance = {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-2, "atol": 1e-2}
  for out, update in zip(outputs, updates, strict=True):
    for leaf, name in enumerate(SHAPES):
      assert out[name].dtype == dtype and out[name].shape == SHAPES[name]
      np.testing.assert_allclose(_f32(out[name]), update[leaf], **tolerance, err_msg=name)
  if not error_feedback:
    assert state == optax.EmptyState()
    return
  assert isinstance(state, rsgd.TwoPhaseMeanState)
  for leaf, name in enumerate(SHAPES):
    memory, server = state.memory[name], state.server_memory[name]
    assert memory.shape == (workers, *SHAPES[name]) and memory.dtype == dtype
    assert server.shape == (workers, -(-max(np.prod(SHAPES[name]), 1) // workers))
    assert server.dtype == dtype
    expected_memory = np.stack([m[leaf] for m in memories])
    np.testing.assert_allclose(_f32(memory), expected_memory, **tolerance, err_msg=name)
    np.testing.assert_allclose(_f32(server), servers[leaf], **tolerance, err_msg=name)


CASES = [
  # scheme, per_leaf, error_feedback, dtype
  ("sign", True, True, np.float32),
  ("sign", False, True, ml_dtypes.bfloat16),
  ("sign", True, False, np.float32),
  ("top_k", True, True, np.float32),
  ("top_k", False, True, np.float32),
  ("top_k", True, True, ml_dtypes.bfloat16),
  ("top_k", True, False, ml_dtypes.bfloat16),
]


def _scheme(name, per_leaf):
  return rsgd.scaled_sign(per_leaf) if name == "sign" else rsgd.top_k(FRACTION, per_leaf)


@pytest.mark.parametrize(
  "scheme,per_leaf,error_feedback,dtype",
  CASES,
  ids=[
    f"{s}-{'leaf' if p else 'tree'}-{'ef' if e else 'noef'}-{np.dtype(d).name}"
    for s, p, e, d in CASES
  ],
)
def test_eight_devices_match_the_numpy_reference(scheme, per_leaf, error_feedback, dtype):
  grads = _gradients(dtype)
  tx = rsgd.compressed_mean(
    _scheme(scheme, per_leaf), "data", error_feedback=error_feedback, exchange="two_phase"
  )
  outputs, state = _run(tx, grads, _mesh((DEVICES,), ("data",)), "data")
  expected = reference.two_phase_exchange(
    grads, scheme, per_leaf=per_leaf, fraction=FRACTION, error_feedback=error_feedback
  )
  _check(outputs, state, expected, error_feedback, dtype, DEVICES)


@pytest.mark.parametrize(
  "scheme,dtype,error_feedback",
  [("sign", np.float32, True), ("top_k", ml_dtypes.bfloat16, False)],
  ids=["sign-ef-float32", "top_k-noef-bfloat16"],
)
def test_two_by_four_mesh_with_both_axes_compressed_matches_eight_workers(
  scheme, dtype, error_feedback
):
  """Compressed across ("host", "local"): eight workers, numbered row-major over the mesh."""
  grads = _gradients(dtype, seed=1)
  tx = rsgd.compressed_mean(
    _scheme(scheme, True), ("host", "local"), error_feedback=error_feedback, exchange="two_phase"
  )
  outputs, state = _run(tx, grads, _mesh((2, 4), ("host", "local")), ("host", "local"))
  expected = reference.two_phase_exchange(
    grads, scheme, fraction=FRACTION, error_feedback=error_feedback
  )
  _check(outputs, state, expected, error_feedback, dtype, DEVICES)


def test_two_by_four_mesh_compresses_across_hosts_after_a_local_mean():
  """Across "host" (two servers) after an exact mean over "local": the reference gets host means."""
  hosts, local = 2, 4
  grads = _gradients(ml_dtypes.bfloat16, seed=2)
  tx = rsgd.compressed_mean(
    rsgd.top_k(FRACTION), "host", average_axis="local", exchange="two_phase"
  )
  outputs, state = _run(tx, grads, _mesh((hosts, local), ("host", "local")), "host")
  host_grads = [
    [
      [
        np.mean(
          np.stack([g[leaf].astype(np.float64) for g in step[h * local : (h + 1) * local]]), 0
        ).astype(ml_dtypes.bfloat16)
        for leaf in range(len(SHAPES))
      ]
      for h in range(hosts)
    ]
    for step in grads
  ]
  expected = reference.two_phase_exchange(host_grads, "top_k", fraction=FRACTION)
  _check(outputs, state, expected, True, ml_dtypes.bfloat16, hosts)


@pytest.mark.parametrize("exchange", ["all_gather", "two_phase"])
@pytest.mark.parametrize("scheme", ["sign", "top_k"])
def test_empty_and_integer_leaves_pass_through_the_same_on_every_device(exchange, scheme):
  """No exchange for them: an empty leaf stays empty, an integer leaf keeps its value, replicated."""
  mesh = _mesh((DEVICES,), ("data",))
  tx = rsgd.compressed_mean(_scheme(scheme, True), "data", exchange=exchange)
  params = {"n": jnp.zeros((2,), jnp.int32), "w": jnp.zeros(16), "z": jnp.zeros((0, 3))}
  with jax.set_mesh(mesh):
    state = tx.init(params)
    specs = rsgd.memory_specs(state, "data")

    @jax.jit
    @functools.partial(
      jax.shard_map, mesh=mesh, in_specs=(P(), specs, P("data")), out_specs=(P(), specs)
    )
    def step(params, state, rows):
      local = jax.lax.pcast(params, "data", to="varying")
      grads = {"n": local["n"] + 3, "w": rows[0], "z": local["z"] + 1}  # n, z vary in type only
      return tx.update(grads, state, params)

    rows = np.arange(DEVICES * 16, dtype=np.float32).reshape(DEVICES, 16)
    updates, state = step(params, state, jax.device_put(rows, NamedSharding(mesh, P("data"))))
  np.testing.assert_array_equal(updates["n"], [3, 3])
  assert updates["n"].dtype == jnp.int32 and updates["z"].shape == (0, 3)
  assert isinstance(state.memory["n"], optax.MaskedNode)
  assert state.memory["z"].shape == (DEVICES, 0, 3)
  assert updates["w"].shape == (16,) and np.all(np.isfinite(updates["w"]))


def test_resize_memory_folds_workers_to_their_mean_and_recuts_the_server_memory():
  """Saved on 8 devices, restored on 3: the workers' mean and every server entry are kept."""
  rng = np.random.default_rng(3)
  size = 10
  workers = rng.normal(size=(8, 2, 5)).astype(np.float32)
  whole = rng.normal(size=size).astype(np.float32)  # the server memory of the whole leaf
  saved_server = np.zeros(8 * 2, np.float32)
  saved_server[:size] = whole
  state = rsgd.TwoPhaseMeanState({"w": jnp.asarray(workers)}, {"w": saved_server.reshape(8, 2)})
  resized = rsgd.resize_memory((optax.EmptyState(), state), 3)[1]
  np.testing.assert_allclose(resized.memory["w"], np.broadcast_to(workers.mean(0), (3, 2, 5)))
  expected_server = np.zeros(3 * 4, np.float32)
  expected_server[:size] = whole
  np.testing.assert_array_equal(resized.server_memory["w"], expected_server.reshape(3, 4))
  assert rsgd.memory_specs(resized, "data") == rsgd.TwoPhaseMeanState(
    {"w": P("data")}, {"w": P("data")}
  )


def test_memory_from_another_device_count_is_refused_until_resized():
  tx = rsgd.compressed_mean(rsgd.scaled_sign(), "data", exchange="two_phase")
  auto = (AxisType.Auto,)
  mesh = jax.make_mesh((4,), ("data",), axis_types=auto, devices=jax.devices("cpu")[:4])
  saved = rsgd.TwoPhaseMeanState({"w": jnp.ones((8, 6))}, {"w": jnp.ones((8, 1))})
  specs = rsgd.memory_specs(saved, "data")

  def step(state, grads):
    return tx.update({"w": grads[0]}, state)[1]

  run = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(specs, P("data")), out_specs=specs))
  grads = jax.device_put(jnp.zeros((4, 6)), NamedSharding(mesh, P("data")))
  with pytest.raises(ValueError, match=r"2 rows .* rsgd\.resize_memory\(state, 4\)"):
    run(saved, grads)
  after = run(rsgd.resize_memory(saved, 4), grads)
  assert after.server_memory["w"].shape == (4, 2)


def test_an_unknown_exchange_is_refused_when_built():
  with pytest.raises(
    ValueError, match=r"`exchange` must be 'all_gather' or 'two_phase', got 'ring'"
  ):
    rsgd.compressed_mean(rsgd.scaled_sign(), "data", exchange="ring")
