"""The residual transformations among the rest of the ecosystem: dtypes, masking, sharding, abstract
initialisation, checkpoints and Flax NNX."""

from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import step_loop
from flax import nnx, serialization
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd

TRANSFORMS = {
  "scale": lambda **kw: rsgd.residual_scale(0.25, **kw),
  "sign": lambda **kw: rsgd.residual_sign(**kw),
  "topk": lambda **kw: rsgd.residual_topk(0.5, **kw),
  "error_feedback": lambda **kw: rsgd.error_feedback(rsgd.scaled_sign(), **kw),
}


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
@pytest.mark.parametrize(
  ("param_dtype", "residual_dtype"),
  [
    (jnp.float32, None),
    (jnp.bfloat16, None),
    (jnp.float32, jnp.bfloat16),
    (jnp.bfloat16, jnp.float32),
  ],
)
def test_updates_keep_param_dtypes_and_the_residual_its_own(name, param_dtype, residual_dtype):
  params = {"w": jnp.linspace(-1, 1, 12, dtype=param_dtype).reshape(3, 4), "n": jnp.arange(3)}
  tx = TRANSFORMS[name](residual_dtype=residual_dtype)
  state = tx.init(params)
  grads = {"w": jnp.full((3, 4), 0.3, param_dtype), "n": jnp.zeros(3, jnp.int32)}
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, params)
    params = optax.apply_updates(params, updates)
  assert updates["w"].dtype == param_dtype
  memory = state.error if name == "error_feedback" else state.residual
  assert memory["w"].dtype == (residual_dtype or param_dtype)
  assert isinstance(memory["n"], optax.MaskedNode)  # integer leaves carry no residual
  chex.assert_trees_all_equal(updates["n"], grads["n"])  # ... and pass through untouched
  if name != "error_feedback":
    x = rsgd.eval_params(state, params)
    assert x["w"].dtype == param_dtype
    chex.assert_trees_all_equal(x["n"], params["n"])


def test_none_and_masked_leaves_pass_through():
  params = {"w": jnp.ones(4), "frozen": None, "also_frozen": jnp.ones(2)}
  tx = optax.chain(
    optax.sgd(0.1),
    optax.masked(rsgd.residual_scale(0.5), {"w": True, "frozen": None, "also_frozen": False}),
  )
  state = tx.init(params)
  grads = {"w": jnp.ones(4), "frozen": None, "also_frozen": jnp.ones(2)}
  updates, state = tx.update(grads, state, params)
  assert updates["frozen"] is None
  np.testing.assert_allclose(updates["also_frozen"], -0.1)
  params = optax.apply_updates(params, updates)
  x = rsgd.eval_params(state, params)
  np.testing.assert_allclose(x["w"], 0.95)  # halfway between y_0 = 1 and y_1 = 0.9
  chex.assert_trees_all_equal(x["also_frozen"], params["also_frozen"])
  assert x["frozen"] is None


def test_abstract_init_on_shape_dtype_structs():
  params = {
    "w": jax.ShapeDtypeStruct((1024, 512), jnp.bfloat16),
    "b": jax.ShapeDtypeStruct((512,), jnp.float32),
    "step": jax.ShapeDtypeStruct((), jnp.int32),
  }
  tx = optax.chain(
    optax.sgd(0.1, momentum=0.9), rsgd.residual_topk(0.01, residual_dtype=jnp.float32)
  )
  state = jax.eval_shape(tx.init, params)
  residual = rsgd.find_residual_state(state).residual
  assert residual["w"].shape == (1024, 512) and residual["w"].dtype == jnp.float32
  assert isinstance(residual["step"], optax.MaskedNode)
  assert rsgd.find_residual_state(state).count.dtype == jnp.int32


@pytest.mark.parametrize("name", sorted(TRANSFORMS))
def test_state_takes_the_params_sharding_on_an_eight_device_mesh(name):
  # The root conftest gives the test process eight CPU devices; naming them keeps this test on the
  # CPU mesh when the default backend is a single GPU.
  cpus = jax.devices("cpu")
  assert len(cpus) == 8, "the root conftest gives the test process eight CPU devices"
  explicit = (jax.sharding.AxisType.Explicit,) * 2
  mesh = jax.make_mesh((4, 2), ("data", "model"), axis_types=explicit, devices=cpus)
  specs = {"w": P("data", "model"), "b": P("model")}
  host_params = {"w": jnp.arange(64.0).reshape(8, 8) / 64, "b": jnp.arange(8.0) / 8}
  tx = optax.chain(optax.sgd(0.1, momentum=0.9), TRANSFORMS[name]())

  def step(params, state):
    grads = jax.grad(lambda p: jnp.sum(jnp.sin(p["w"])) + jnp.sum(p["b"] ** 2))(params)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  with jax.set_mesh(mesh):
    params = {k: jax.device_put(v, NamedSharding(mesh, specs[k])) for k, v in host_params.items()}
    for state in (tx.init(params), jax.jit(tx.init)(params)):  # eager and jitted init
      memory = jax.tree.leaves(state[1])[1:]
      for leaf, k in zip(memory, sorted(params), strict=True):
        assert leaf.sharding.is_equivalent_to(params[k].sharding, params[k].ndim), k
    sharded_params, sharded_state = jax.jit(step)(params, state)
    for leaf, k in zip(jax.tree.leaves(sharded_state[1])[1:], sorted(params), strict=True):
      assert leaf.sharding.is_equivalent_to(params[k].sharding, params[k].ndim), k
  # The same step on one CPU device gives the same numbers.
  one_cpu = jax.device_put(host_params, cpus[0])
  local_params, local_state = jax.jit(step)(one_cpu, tx.init(one_cpu))
  chex.assert_trees_all_close(
    jax.device_get((sharded_params, sharded_state)), (local_params, local_state), rtol=1e-6
  )


def _loop(tx, params, grads_fn, steps, state=None):
  state = tx.init(params) if state is None else state
  params, state, _ = step_loop.run_jitted(step_loop.jitted_step(tx, grads_fn), params, state, steps)
  return params, state


@pytest.mark.standard_promotion
def test_restored_state_continues_bit_for_bit(tmp_path):
  tx = optax.chain(optax.sgd(0.05, momentum=0.9), rsgd.residual_topk(0.25))
  params = {"w": jnp.linspace(-1.0, 1.0, 16).reshape(4, 4), "b": jnp.ones(4)}
  grads_fn = jax.grad(lambda p: jnp.sum(jnp.cos(p["w"]) * p["b"]) + jnp.sum(p["b"] ** 4))
  uninterrupted = _loop(tx, params, grads_fn, 6)

  half = _loop(tx, params, grads_fn, 3)
  path = tmp_path / "ckpt.msgpack"
  path.write_bytes(serialization.to_bytes(half))
  template = (params, tx.init(params))
  restored = serialization.from_bytes(template, path.read_bytes())
  resumed = _loop(tx, restored[0], grads_fn, 3, state=restored[1])

  chex.assert_trees_all_equal(resumed, uninterrupted)
  chex.assert_trees_all_equal(
    rsgd.eval_params(resumed[1], resumed[0]), rsgd.eval_params(uninterrupted[1], uninterrupted[0])
  )


class _Net(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(3, 4, rngs=rngs)
    self.norm = nnx.BatchNorm(4, rngs=rngs)
    self.out = nnx.Linear(4, 2, rngs=rngs)

  def __call__(self, x):
    return self.out(nnx.relu(self.norm(self.dense(x))))


@pytest.mark.standard_promotion
def test_nnx_model_is_evaluated_at_eval_params():
  model = _Net(nnx.Rngs(0))
  optimizer = nnx.Optimizer(
    model, optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_scale(0.25)), wrt=nnx.Param
  )
  x_batch = jnp.linspace(-1, 1, 15).reshape(5, 3)
  y_batch = jnp.array([0, 1, 0, 1, 1])

  def loss_fn(model):
    logits = model(x_batch)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_batch).mean()

  @nnx.jit
  def train_step(model, optimizer):
    grads = nnx.grad(loss_fn)(model)
    optimizer.update(model, grads)

  ema = jax.tree.map(jnp.copy, nnx.state(model, nnx.Param))  # a snapshot, not the live Variables
  for _ in range(3):
    train_step(model, optimizer)
    ema = jax.tree.map(lambda e, y: 0.75 * e + 0.25 * y, ema, nnx.state(model, nnx.Param))

  # The three lines from the README.
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  shipped = nnx.merge(graphdef, rsgd.eval_params(optimizer.opt_state, params), rest)
  shipped.eval()

  chex.assert_trees_all_close(nnx.state(shipped, nnx.Param), ema, rtol=1e-5, atol=1e-6)
  model.eval()
  assert not np.allclose(shipped(x_batch), model(x_batch))
  assert 0 < float(rsgd.proximity(optimizer.opt_state, params)) < 1


# ---------------------------------------------------------------------------------------------
# The contract matrix: every exported transformation, after the base optimizer, inside every
# wrapper and nesting a user may put it in, follows the paper's equations (reference.py): the
# params are the base iterate y (or the compressed x), and eval_params finds x = y + r (or, for
# iterate_averaging, the average of x) wherever the state sits.

LR = 0.1
STEPS = 2
Y0 = {"b": np.array([0.5, -1.0, 2.0], np.float32), "w": np.linspace(-1, 1, 6, dtype=np.float32)}


def _grad_of(b, w):
  """The gradient of sum(b**2) + sum(sin(w)), leaves in the tree's order (b, w); numpy or jax."""
  np_like = jnp if isinstance(w, jax.Array) else np
  return [2 * b, np_like.cos(w)]


CONTRACT = {
  # name: (transformation after the base optimizer, scheme R, how it moves the params)
  "residual": (lambda: rsgd.residual(rsgd.scaling(0.25)), reference.scaling(0.25), "rsgd"),
  "residual_scale": (lambda: rsgd.residual_scale(0.25), reference.scaling(0.25), "rsgd"),
  "residual_sign": (rsgd.residual_sign, reference.scaled_sign(), "rsgd"),
  "residual_topk": (lambda: rsgd.residual_topk(0.5), reference.top_k(0.5), "rsgd"),
  "error_feedback": (
    lambda: rsgd.error_feedback(rsgd.scaled_sign()),
    reference.scaled_sign(),
    "error_feedback",
  ),
  "compress": (lambda: rsgd.compress(rsgd.scaled_sign()), reference.scaled_sign(), "compress"),
  "iterate_averaging": (
    lambda: rsgd.iterate_averaging(rsgd.residual_scale(0.25)),
    reference.scaling(0.25),
    "averaged",
  ),
}

WRAPPERS = {
  "chain": lambda t: optax.chain(optax.sgd(LR), t),
  "named_chain": lambda t: optax.named_chain(("base", optax.sgd(LR)), ("t", t)),
  "inject_hyperparams": lambda t: optax.inject_hyperparams(
    lambda learning_rate: optax.chain(optax.sgd(learning_rate), t)
  )(learning_rate=LR),
  "masked": lambda t: optax.chain(optax.sgd(LR), optax.masked(t, {"b": False, "w": True})),
  "MultiSteps": lambda t: optax.MultiSteps(optax.chain(optax.sgd(LR), t), every_k_schedule=1),
  "apply_if_finite": lambda t: optax.apply_if_finite(optax.chain(optax.sgd(LR), t), 3),
  "nnx.Optimizer": lambda t: optax.chain(optax.sgd(LR), t),
}


def _expected(name: str, masked: bool) -> tuple[list, list]:
  """(params, eval_params) after STEPS steps, leaves [b, w], from the paper's equations."""
  _, scheme, kind = CONTRACT[name]
  y0 = [Y0["b"], Y0["w"]]
  if kind == "compress" or kind == "error_feedback":
    xs = reference.error_feedback(
      y0, _grad_of, reference.sgd(LR), scheme, STEPS, memory=kind == "error_feedback"
    )
    params = point = xs[-1]
  else:
    xs, ys = reference.rsgd(y0, _grad_of, reference.sgd(LR), scheme, STEPS)
    params, point = ys[-1], xs[-1]
    if kind == "averaged":  # averaging switched on before the first step: the mean of all x_t
      point = reference.iterate_average(xs, 0)[-1]
  if masked:  # the masked-out leaf b follows plain SGD (its y is its x); only w is transformed
    b = reference.base_run(y0, _grad_of, reference.sgd(LR), STEPS)[-1][0]
    params, point = [b, params[1]], [b, point[1]]
  return params, point


class _Leaves(nnx.Module):
  def __init__(self):
    self.b = nnx.Param(jnp.asarray(Y0["b"]))
    self.w = nnx.Param(jnp.asarray(Y0["w"]))


def _run_nnx(tx) -> tuple[dict, Any]:
  model = _Leaves()
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

  @nnx.jit
  def train_step(model, optimizer):
    loss = lambda m: jnp.sum(m.b[...] ** 2) + jnp.sum(jnp.sin(m.w[...]))
    optimizer.update(model, nnx.grad(loss)(model))

  if rsgd.AveragingState.__name__ in repr(optimizer.opt_state):
    optimizer.opt_state = rsgd.start_averaging(optimizer.opt_state)
  for _ in range(STEPS):
    train_step(model, optimizer)
  return nnx.state(model, nnx.Param), optimizer.opt_state


def _run(tx, averaged: bool) -> tuple[dict, Any]:
  params = {k: jnp.asarray(v) for k, v in Y0.items()}
  state = tx.init(params)
  if averaged:
    state = rsgd.start_averaging(state)
  grads_fn = lambda p: dict(zip(("b", "w"), _grad_of(p["b"], p["w"]), strict=True))
  params, state, _ = step_loop.run_jitted(step_loop.jitted_step(tx, grads_fn), params, state, STEPS)
  return params, state


@pytest.mark.standard_promotion
@pytest.mark.parametrize("wrapper", sorted(WRAPPERS))
@pytest.mark.parametrize("name", sorted(CONTRACT))
def test_contract_matrix(name, wrapper):
  tx = WRAPPERS[wrapper](CONTRACT[name][0]())
  kind = CONTRACT[name][2]
  if wrapper == "nnx.Optimizer":
    params, state = _run_nnx(tx)
  else:
    params, state = _run(tx, averaged=kind == "averaged")
  expected_params, expected_point = _expected(name, masked=wrapper == "masked")
  leaves = [np.asarray(params["b"][...]), np.asarray(params["w"][...])]
  for actual, expected in zip(leaves, expected_params, strict=True):
    np.testing.assert_allclose(actual, expected, rtol=2e-6, atol=1e-6)
  if kind in ("rsgd", "averaged"):
    x = rsgd.eval_params(state, params)
    for actual, expected in zip((x["b"], x["w"]), expected_point, strict=True):
      np.testing.assert_allclose(np.asarray(actual[...]), expected, rtol=2e-6, atol=1e-6)
