"""apply_if_finite_across around the compressed exchange, against the NumPy reference with skips.

One device's NaN or infinity must skip the step on every device: the mean, the error-feedback
memories and the counters as if that step's gradients had never arrived. The reference is the
compressed exchange's (written from the algorithms, never calling the library) run over the finite
steps only; the counters follow optax.apply_if_finite's contract.
"""

import functools

import chex
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from compressed_test import (
  DEVICES,
  FRACTION,
  SHAPES,
  _as_f32,
  _gradients,
  _mesh,
  _run,
  _tolerance,
  ref_exchange,
  ref_sign,
  ref_top_k,
)
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd

STEPS = 5
# step -> (device, leaf, entry, value): the poison each bad step carries on one device.
POISON = {1: (3, 2, 4, np.nan), 2: (5, 0, 1, np.inf)}
COMPRESSORS = {
  "sign": (lambda: rsgd.scaled_sign(True), lambda v: ref_sign(v, True)),
  "topk": (lambda: rsgd.top_k(FRACTION, True), lambda v: ref_top_k(v, True)),
}


def _poisoned_gradients(dtype):
  grads = _gradients(dtype, seed=3) + _gradients(dtype, seed=4)[: STEPS - 3]
  for step, (device, leaf, entry, value) in POISON.items():
    grads[step][device][leaf].reshape(-1)[entry] = value
  return grads


@pytest.mark.parametrize(
  "scheme,dtype",
  [("sign", np.float32), ("topk", np.float32), ("sign", ml_dtypes.bfloat16)],
  ids=["sign-float32", "topk-float32", "sign-bfloat16"],
)
def test_a_non_finite_gradient_on_one_device_skips_the_step_on_all(scheme, dtype):
  make_scheme, compress = COMPRESSORS[scheme]
  grads = _poisoned_gradients(dtype)
  tx = rsgd.apply_if_finite_across(
    rsgd.compressed_mean(make_scheme(), "data"), "data", max_consecutive_errors=5
  )
  outputs, states = _run(tx, grads, _mesh((DEVICES,), ("data",)), "data", "data", dtype)

  finite_steps = [t for t in range(STEPS) if t not in POISON]
  means, memory = ref_exchange([grads[t] for t in finite_steps], compress, True)
  expected_means = dict(zip(finite_steps, means, strict=True))
  tolerance = _tolerance(dtype)
  for t, out in enumerate(outputs):
    for leaf, name in enumerate(SHAPES):
      got = _as_f32(out[name])
      if t in POISON:  # skipped on every device: a zero update
        np.testing.assert_array_equal(got, 0, err_msg=f"step {t}, {name}")
      else:
        expected = np.broadcast_to(_as_f32(expected_means[t][leaf]), (DEVICES, *SHAPES[name]))
        np.testing.assert_allclose(got, expected, **tolerance, err_msg=f"step {t}, {name}")
  last = states[-1]
  for leaf, name in enumerate(SHAPES):
    got = _as_f32(last.inner_state.memory[name])
    assert np.isfinite(got).all(), name
    np.testing.assert_allclose(got, np.stack([_as_f32(m[leaf]) for m in memory]), **tolerance)
  # The counters, as optax.apply_if_finite keeps them: consecutive, last, total.
  assert [int(s.notfinite_count) for s in states] == [0, 1, 2, 0, 0]
  assert [bool(s.last_finite) for s in states] == [True, False, False, True, True]
  assert [int(s.total_notfinite) for s in states] == [0, 1, 2, 2, 2]


def test_on_a_two_by_four_mesh_the_flag_covers_both_axes():
  """Compressed across hosts after a local mean; the poison sits on one local device of one host."""
  hosts, local = 2, 4
  grads = _poisoned_gradients(np.float32)
  make_scheme, compress = COMPRESSORS["topk"]
  tx = rsgd.apply_if_finite_across(
    rsgd.compressed_mean(make_scheme(), "host", average_axis="local"),
    ("host", "local"),
    max_consecutive_errors=5,
  )
  mesh = _mesh((hosts, local), ("host", "local"))
  outputs, states = _run(tx, grads, mesh, ("host", "local"), "host", np.float32)

  finite_steps = [t for t in range(STEPS) if t not in POISON]
  host_grads = [
    [
      [
        np.mean([g[leaf] for g in grads[t][h * local : (h + 1) * local]], axis=0)
        for leaf in range(3)
      ]
      for h in range(hosts)
    ]
    for t in finite_steps
  ]
  means, memory = ref_exchange(host_grads, compress, True)
  for t, mean in zip(finite_steps, means, strict=True):
    for leaf, name in enumerate(SHAPES):
      expected = np.broadcast_to(mean[leaf], (DEVICES, *SHAPES[name]))
      np.testing.assert_allclose(outputs[t][name], expected, rtol=1e-5, atol=1e-6)
  for t in POISON:
    assert all(np.all(np.asarray(outputs[t][name]) == 0) for name in SHAPES)
  for leaf, name in enumerate(SHAPES):
    got = states[-1].inner_state.memory[name]
    np.testing.assert_allclose(got, np.stack([m[leaf] for m in memory]), rtol=1e-5, atol=1e-6)


def test_matches_optax_apply_if_finite_on_one_device_including_giving_up():
  """On one device the wrapper is optax.apply_if_finite: the same updates and states, field by
  field, through skipped steps and the step after max_consecutive_errors that is applied anyway."""
  inner = optax.sgd(0.1, momentum=0.9)
  ours = rsgd.apply_if_finite_across(inner, "data", max_consecutive_errors=1)
  theirs = optax.apply_if_finite(inner, max_consecutive_errors=1)
  mesh = jax.make_mesh((1,), ("data",), devices=jax.devices("cpu")[:1])
  params = {"w": jnp.zeros(3)}
  gradients = [[1.0, 2.0, 3.0], [np.nan, 0.0, 1.0], [1.0, 1.0, 1.0], [np.inf, 1.0, 0.0]]
  gradients += [[0.5, np.nan, 0.0], [2.0, 0.0, -1.0]]

  with jax.set_mesh(mesh):
    state = ours.init(params)

    @jax.jit
    @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P(), P()), out_specs=(P(), P()))
    def step(grads, state):
      return ours.update(grads, state, params)

  expected_state = theirs.init(params)
  for g in gradients:
    grads = {"w": jnp.asarray(g, jnp.float32)}
    updates, state = step(grads, state)
    expected_updates, expected_state = theirs.update(grads, expected_state, params)
    chex.assert_trees_all_equal((updates, state), (expected_updates, expected_state))
  assert int(state.total_notfinite) == 3  # steps 1, 3 and 4; step 4 applied (two in a row)


@pytest.mark.parametrize(
  "axis_name,max_errors,message",
  [("", 1, "mesh axis name"), ("data", -1, "non-negative integer"), ("data", 1.5, "integer")],
)
def test_bad_arguments_are_refused_when_built(axis_name, max_errors, message):
  with pytest.raises(ValueError, match=message):
    rsgd.apply_if_finite_across(optax.sgd(0.1), axis_name, max_errors)


def test_an_unbound_axis_points_to_optax_apply_if_finite():
  tx = rsgd.apply_if_finite_across(optax.sgd(0.1), "data", 1)
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match=r"optax\.apply_if_finite"):
    tx.update(params, tx.init(params), params)


def test_memory_specs_replicate_the_counters_and_shard_the_memories():
  tx = rsgd.apply_if_finite_across(rsgd.compressed_mean(rsgd.scaled_sign(), "data"), "data", 1)
  with jax.set_mesh(_mesh((DEVICES,), ("data",))):
    state = tx.init({"w": jnp.ones(3)})
  specs = rsgd.memory_specs(state, "data")
  assert specs.notfinite_count == P() and specs.total_notfinite == P()
  assert specs.inner_state.memory["w"] == P("data")
  sharded = jax.tree.map(lambda x: x.sharding, state.inner_state.memory["w"])
  assert sharded.is_equivalent_to(NamedSharding(sharded.mesh, P("data")), 2)
