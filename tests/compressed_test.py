"""compressed_mean on eight CPU devices against a NumPy reference of multi-worker EF compression.

The reference below is written from the algorithms (EF-SignSGD, Karimireddy et al. 2019; sparsified
SGD with memory, Stich et al. 2018; the wire formats of rsgd.compressed_mean's docstring), in NumPy,
worker by worker, and never calls the library. Each configuration is compiled once, as one exchange
step over the mesh, and run for several steps; the test compares what every device returned (the
same mean on all of them) and every device's memory after the last step.
"""

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import optax
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd

DEVICES = 8
STEPS = 3
FRACTION = 0.1
SHAPES = {"b": (6,), "s": (), "w": (5, 7)}  # sorted: the order of jax's dict leaves

# ---------------------------------------------------------------------------------------------
# The NumPy reference. A tree is a list of arrays in SHAPES order.


def ref_sign(vs, per_leaf):
  """One bit an entry (v >= 0 is +1) times float32 mean |v| of the leaf, or of the whole tree."""
  mags = [np.abs(v.astype(np.float64)) for v in vs]
  if per_leaf:
    scales = [m.mean() for m in mags]
  else:
    scales = [sum(m.sum() for m in mags) / sum(m.size for m in mags)] * len(vs)
  return [
    (np.float32(s) * np.where(v.astype(np.float64) >= 0, 1, -1).astype(np.float32)).astype(v.dtype)
    for s, v in zip(scales, vs, strict=True)
  ]


def _keep_largest(flat, k):
  """Keeps the k largest |entries|, ties toward the lower index (a stable sort), zeroes the rest."""
  kept = np.argsort(-np.abs(flat), kind="stable")[:k]
  out = np.zeros_like(flat)
  out[kept] = flat[kept]
  return out


def ref_top_k(vs, per_leaf, fraction=FRACTION):
  if per_leaf:
    return [
      _keep_largest(v.astype(np.float64).ravel(), max(1, round(fraction * v.size)))
      .reshape(v.shape)
      .astype(v.dtype)
      for v in vs
    ]
  flat = np.concatenate([v.astype(np.float64).ravel() for v in vs])
  kept = _keep_largest(flat, max(1, round(fraction * flat.size)))
  out, start = [], 0
  for v in vs:
    out.append(kept[start : start + v.size].reshape(v.shape).astype(v.dtype))
    start += v.size
  return out


def ref_exchange(grads, compress, error_feedback):
  """Workers' compressed exchange over steps.

  ``grads[t][i]`` is worker i's gradient tree at step t. Worker i keeps memory e_i (zero at first),
  sends c_i = R(g_i + e_i), keeps e_i = g_i + e_i - c_i; all receive mean_i c_i. Sums are exact
  (float64) and rounded once into the gradients' dtype. Returns (means per step, final memories).
  """
  workers = len(grads[0])
  memory = [[np.zeros_like(g) for g in grads[0][0]] for _ in range(workers)]
  means = []
  for step in grads:
    sent = []
    for i, g in enumerate(step):
      if error_feedback:
        v = [
          (a.astype(np.float64) + e.astype(np.float64)).astype(a.dtype)
          for a, e in zip(g, memory[i], strict=True)
        ]
      else:
        v = g
      c = compress(v)
      if error_feedback:
        memory[i] = [
          (a.astype(np.float64) - b.astype(np.float64)).astype(a.dtype)
          for a, b in zip(v, c, strict=True)
        ]
      sent.append(c)
    means.append(
      [
        (sum(c[leaf].astype(np.float64) for c in sent) / workers).astype(step[0][leaf].dtype)
        for leaf in range(len(SHAPES))
      ]
    )
  return means, memory


# ---------------------------------------------------------------------------------------------
# The library, one compiled exchange step per configuration.


def _gradients(dtype, seed=0, workers=DEVICES):
  """grads[t][i]: worker i's tree at step t, normal entries, some leaves of larger scale.

  At the first step, leaf "b" starts with two exact zeros on every worker: one bit an entry sends
  them as +scale (the reference says so too), and top-k meets tied magnitudes.
  """
  rng = np.random.default_rng(seed)
  grads = [
    [
      [
        (rng.normal(size=shape) * (1 + j)).astype(np.float32).astype(dtype)
        for j, shape in enumerate(SHAPES.values())
      ]
      for _ in range(workers)
    ]
    for _ in range(STEPS)
  ]
  for worker in grads[0]:
    worker[0][:2] = 0
  return grads


def _stacked(step_grads, mesh, spec):
  """The workers' trees stacked on a leading device axis, sharded one row a device."""
  return {
    name: jax.device_put(np.stack([g[leaf] for g in step_grads]), NamedSharding(mesh, P(spec)))
    for leaf, name in enumerate(SHAPES)
  }


def _mesh(shape, names):
  cpus = jax.devices("cpu")
  assert len(cpus) == DEVICES, "the root conftest gives the test process eight CPU devices"
  return jax.make_mesh(shape, names, axis_types=(AxisType.Explicit,) * len(shape), devices=cpus)


def _run(tx, grads, mesh, grad_spec, memory_axis, dtype):
  """Runs ``tx`` over the steps; returns every device's output and the state after each step."""
  params = {name: jnp.zeros(shape, dtype) for name, shape in SHAPES.items()}
  with jax.set_mesh(mesh):
    state = tx.init(params)
    specs = rsgd.memory_specs(state, memory_axis)

    @jax.jit
    @functools.partial(
      jax.shard_map, mesh=mesh, in_specs=(P(grad_spec), specs), out_specs=(P(grad_spec), specs)
    )
    def step(stacked, state):
      local = jax.tree.map(lambda g: g[0], stacked)
      updates, state = tx.update(local, state)
      return jax.tree.map(lambda u: u[None], updates), state

    outputs, states = [], []
    for step_grads in grads:
      out, state = step(_stacked(step_grads, mesh, grad_spec), state)
      outputs.append(out)
      states.append(state)
  return outputs, states


def _as_f32(x):
  return np.asarray(x).astype(np.float32)


def _tolerance(dtype):
  return {"rtol": 1e-5, "atol": 1e-6} if dtype == np.float32 else {"rtol": 1e-2, "atol": 1e-2}


SCHEMES = {
  "sign": (rsgd.scaled_sign, ref_sign),
  "topk": (lambda per_leaf: rsgd.top_k(FRACTION, per_leaf), ref_top_k),
}
CASES = [
  # scheme, per_leaf, error_feedback, dtype
  ("sign", True, True, np.float32),
  ("sign", False, True, np.float32),
  ("sign", True, False, np.float32),
  ("sign", False, True, ml_dtypes.bfloat16),
  ("topk", True, True, np.float32),
  ("topk", False, True, np.float32),
  ("topk", False, False, np.float32),
  ("topk", True, True, ml_dtypes.bfloat16),
]


@pytest.mark.parametrize(
  "scheme,per_leaf,error_feedback,dtype",
  CASES,
  ids=[
    f"{s}-{'leaf' if p else 'tree'}-{'ef' if e else 'noef'}-{np.dtype(d).name}"
    for s, p, e, d in CASES
  ],
)
def test_eight_devices_match_the_numpy_reference(scheme, per_leaf, error_feedback, dtype):
  make_scheme, reference = SCHEMES[scheme]
  grads = _gradients(dtype)
  tx = rsgd.compressed_mean(make_scheme(per_leaf), "data", error_feedback=error_feedback)
  outputs, states = _run(tx, grads, _mesh((DEVICES,), ("data",)), "data", "data", dtype)
  state = states[-1]
  means, memory = ref_exchange(grads, lambda v: reference(v, per_leaf), error_feedback)

  tolerance = _tolerance(dtype)
  for out, mean in zip(outputs, means, strict=True):
    for leaf, name in enumerate(SHAPES):
      assert out[name].dtype == dtype
      expected = np.broadcast_to(_as_f32(mean[leaf]), (DEVICES, *SHAPES[name]))  # every device
      np.testing.assert_allclose(_as_f32(out[name]), expected, **tolerance, err_msg=name)
  if not error_feedback:
    assert state == optax.EmptyState()
    return
  for leaf, name in enumerate(SHAPES):
    got = state.memory[name]
    assert got.shape == (DEVICES, *SHAPES[name]) and got.dtype == dtype
    expected = np.stack([_as_f32(m[leaf]) for m in memory])
    np.testing.assert_allclose(_as_f32(got), expected, **tolerance, err_msg=name)


@pytest.mark.parametrize("scheme", sorted(SCHEMES))
def test_two_by_four_mesh_compresses_across_hosts_after_a_local_mean(scheme):
  make_scheme, reference = SCHEMES[scheme]
  hosts, local = 2, 4
  grads = _gradients(np.float32, seed=1)
  tx = rsgd.compressed_mean(make_scheme(True), "host", average_axis="local")
  outputs, states = _run(
    tx, grads, _mesh((hosts, local), ("host", "local")), ("host", "local"), "host", np.float32
  )
  state = states[-1]
  # The reference: each host's workers average exactly, then the hosts exchange compressed.
  host_grads = [
    [
      [
        np.mean(np.stack([g[leaf] for g in step[h * local : (h + 1) * local]]), axis=0)
        for leaf in range(len(SHAPES))
      ]
      for h in range(hosts)
    ]
    for step in grads
  ]
  means, memory = ref_exchange(host_grads, lambda v: reference(v, True), True)
  for out, mean in zip(outputs, means, strict=True):
    for leaf, name in enumerate(SHAPES):
      expected = np.broadcast_to(mean[leaf], (DEVICES, *SHAPES[name]))
      np.testing.assert_allclose(out[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)
  for leaf, name in enumerate(SHAPES):
    assert state.memory[name].shape == (hosts, *SHAPES[name])  # one memory a host
    expected = np.stack([m[leaf] for m in memory])
    np.testing.assert_allclose(state.memory[name], expected, rtol=1e-5, atol=1e-6, err_msg=name)


def test_chain_params_follow_the_base_trajectory_fed_by_the_compressed_mean():
  """compressed_mean -> SGD with momentum -> residual_scale, the gradient taken at the params."""
  mesh = _mesh((DEVICES,), ("data",))
  lr, momentum, alpha = 0.1, 0.9, 1 / 16
  tx = optax.chain(
    rsgd.compressed_mean(rsgd.scaled_sign(), "data"),
    optax.sgd(lr, momentum=momentum),
    rsgd.residual_scale(alpha),
  )
  rng = np.random.default_rng(2)
  targets = rng.normal(size=(DEVICES, 9)).astype(np.float32)  # device i's loss: |p - a_i|^2 / 2
  start = rng.normal(size=9).astype(np.float32)

  with jax.set_mesh(mesh):
    params = {"p": jnp.asarray(start)}
    state = tx.init(params)
    specs = rsgd.memory_specs(state, "data")

    @jax.jit
    @functools.partial(
      jax.shard_map, mesh=mesh, in_specs=(P(), specs, P("data")), out_specs=(P(), specs)
    )
    def step(params, state, target):
      local = jax.lax.pcast(params, "data", to="varying")  # device i's own gradient
      grads = jax.grad(lambda p: 0.5 * jnp.sum((p["p"] - target[0]) ** 2))(local)
      updates, state = tx.update(grads, state, params)
      return optax.apply_updates(params, updates), state

    sharded_targets = jax.device_put(targets, NamedSharding(mesh, P("data")))
    for _ in range(STEPS):
      params, state = step(params, state, sharded_targets)
    shipped = rsgd.eval_params(state, params)

  # The reference: EF-SignSGD exchange of g_i = y - a_i, heavy-ball SGD on y, x the EMA of y.
  y = start.astype(np.float64)
  x, trace = y.copy(), np.zeros_like(y)
  memory = np.zeros((DEVICES, 9))
  for _ in range(STEPS):
    v = (y - targets) + memory
    scales = np.abs(v).mean(axis=1, keepdims=True)
    sent = scales * np.where(v >= 0, 1.0, -1.0)
    memory = v - sent
    trace = momentum * trace + sent.mean(axis=0)
    y = y - lr * trace
    x = (1 - alpha) * x + alpha * y
  np.testing.assert_allclose(params["p"], y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(shipped["p"], x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state[0].memory["p"], memory, rtol=1e-5, atol=1e-5)


def test_scaling_is_refused_with_a_pointer_to_pmean():
  with pytest.raises(ValueError, match=r"as many bytes .* jax\.lax\.pmean"):
    rsgd.compressed_mean(rsgd.scaling(0.5), "data")


@pytest.mark.parametrize(
  "kwargs,message",
  [
    ({"scheme": lambda v: v}, "wire format"),
    ({"axis_name": ""}, "mesh axis name"),
    ({"axis_name": "host", "average_axis": ("host", "local")}, "share an axis"),
    ({"error_feedback": 1}, "True or False"),
    ({"memory_dtype": jnp.int32}, "floating dtype"),
  ],
)
def test_bad_arguments_are_refused_when_built(kwargs, message):
  arguments = {"scheme": rsgd.scaled_sign(), "axis_name": "data", **kwargs}
  with pytest.raises(ValueError, match=message):
    rsgd.compressed_mean(arguments.pop("scheme"), arguments.pop("axis_name"), **arguments)


def test_init_and_update_outside_the_mesh_say_where_to_call_them():
  tx = rsgd.compressed_mean(rsgd.scaled_sign(), "data")
  params = {"w": jnp.ones(3)}
  with pytest.raises(ValueError, match=r"jax\.set_mesh"):
    tx.init(params)
  with jax.set_mesh(_mesh((DEVICES,), ("data",))):
    state = tx.init(params)
  with pytest.raises(ValueError, match=r"inside jax\.shard_map"):
    tx.update(params, state)


def test_memory_from_another_device_count_is_refused_then_resized():
  """Saved on 8 devices, restored on 4: update refuses; resize_memory keeps the mean memory."""
  tx = rsgd.compressed_mean(rsgd.top_k(0.5), "data")
  auto = (AxisType.Auto,)  # jit places the restored arrays as the specs say
  mesh = jax.make_mesh((4,), ("data",), axis_types=auto, devices=jax.devices("cpu")[:4])
  saved = rsgd.CompressedMeanState({"w": jnp.arange(16.0).reshape(8, 2)})
  specs = rsgd.memory_specs(saved, "data")

  def step(state, grads):
    return tx.update({"w": grads[0]}, state)[1]

  run = jax.jit(jax.shard_map(step, mesh=mesh, in_specs=(specs, P("data")), out_specs=specs))
  grads = jax.device_put(jnp.zeros((4, 2)), NamedSharding(mesh, P("data")))
  with pytest.raises(ValueError, match=r"2 rows .* rsgd\.resize_memory\(state, 4\)"):
    run(saved, grads)

  resized = rsgd.resize_memory(saved, 4)
  np.testing.assert_allclose(resized.memory["w"], np.broadcast_to([7.0, 8.0], (4, 2)))
  # With zero gradients each device sends the larger entry of the mean memory (7, 8): the 8.
  after = run(resized, grads)
  np.testing.assert_allclose(after.memory["w"], np.broadcast_to([7.0, 0.0], (4, 2)))


def test_memory_is_sharded_one_row_a_device_under_an_explicit_mesh():
  mesh = _mesh((DEVICES,), ("data",))
  tx = rsgd.compressed_mean(rsgd.scaled_sign(), "data")
  with jax.set_mesh(mesh):
    state = tx.init({"w": jnp.ones((3, 2)), "n": jnp.zeros((), jnp.int32)})
  assert isinstance(state.memory["n"], optax.MaskedNode)  # integer leaves keep no memory
  memory = state.memory["w"]
  assert memory.shape == (DEVICES, 3, 2)
  assert memory.sharding.is_equivalent_to(NamedSharding(mesh, P("data")), memory.ndim)


def test_gradients_summed_by_jax_grad_are_refused():
  """jax.grad at replicated params inside shard_map all-reduces the gradient: the exchange says so."""
  mesh = _mesh((DEVICES,), ("data",))
  tx = rsgd.compressed_mean(rsgd.scaled_sign(), "data")
  with jax.set_mesh(mesh):
    params = {"p": jnp.ones(3)}
    state = tx.init(params)
    specs = rsgd.memory_specs(state, "data")

    @functools.partial(
      jax.shard_map, mesh=mesh, in_specs=(P(), specs, P("data")), out_specs=(P(), specs)
    )
    def step(params, state, target):
      grads = jax.grad(lambda p: jnp.sum((p["p"] - target[0]) ** 2))(params)
      return tx.update(grads, state, params)

    targets = jax.device_put(jnp.zeros((DEVICES, 3)), NamedSharding(mesh, P("data")))
    with pytest.raises(ValueError, match=r"pcast\(params, 'data', to='varying'\)"):
      jax.jit(step)(params, state, targets)
