"""Tests of iterate averaging (ASGD, RASGD) and the NT-ASGD trigger against NumPy references."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import step_loop
from flax import nnx, serialization
from hypothesis import given, settings
from hypothesis import strategies as st
from jax_compat import enable_x64

import rsgd_optax as rsgd
from rsgd_optax import (
  averaging_started,
  eval_params,
  find_averaging_state,
  iterate_averaging,
  nonmonotone_trigger,
  start_averaging,
)

# ---------------------------------------------------------------------------------------------
# The least-squares problem the runs are compared on; the references are in tests/reference.py.

RNG = np.random.default_rng(1)
A = RNG.normal(size=(10, 8))
TARGET = RNG.normal(size=(10,))
W0 = RNG.normal(size=(8,))
B0 = RNG.normal(size=(3,))


def np_grads(w, b):
  resid = A @ w + b.sum() - TARGET
  return [A.T @ resid, np.full(3, resid.sum())]


def jax_loss(params):
  resid = A @ params["w"] + params["b"].sum() - TARGET
  return 0.5 * jnp.sum(resid**2)


def np_rasgd(np_scheme, lr, steps, start):
  """Per step, the point eval_params must give: x before any averaged step, then the mean."""
  xs, _ = reference.rsgd([W0, B0], np_grads, reference.sgd(lr), np_scheme, steps)
  return reference.iterate_average(xs, start)


SCHEMES = {
  "none": (None, None),
  "scale": (lambda: rsgd.scaling(0.25), reference.scaling(0.25)),
  "sign": (rsgd.scaled_sign, reference.scaled_sign()),
  "topk": (lambda: rsgd.top_k(0.25), reference.top_k(0.25)),
}


def make_tx(name, lr):
  make_scheme = SCHEMES[name][0]
  base = optax.sgd(lr)
  inner = base if make_scheme is None else optax.chain(base, rsgd.residual(make_scheme()))
  return iterate_averaging(inner)


def as_tree(leaves):
  """Params in JAX's default float dtype (float64 only inside ``jax.enable_x64``)."""
  return {"b": jnp.asarray(leaves[1]), "w": jnp.asarray(leaves[0])}


def grad_fn(params):
  return jax.grad(jax_loss)(params)


@pytest.fixture(scope="module")
def step_fns():
  """One jitted step per scheme, shared by the tests (compiling is the slow part)."""

  def build(name):
    tx = make_tx(name, 0.01)
    return tx, step_loop.jitted_step(tx, grad_fn)

  return {name: build(name) for name in SCHEMES}


def run(tx, step, steps, start, params=None, state=None, first=0):
  params = as_tree([W0, B0]) if params is None else params
  state = tx.init(params) if state is None else state
  return step_loop.run_jitted(
    step,
    params,
    state,
    steps,
    before_step=lambda t, state: start_averaging(state) if t == start else state,
    record=lambda params, state: eval_params(state, params),
    first=first,
  )


@pytest.mark.parametrize("start", [0, 3, None], ids=["from_step_0", "switch_at_3", "never"])
@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_matches_the_numpy_reference_in_float64(name, start):
  np_scheme = SCHEMES[name][1]
  steps = 7
  with enable_x64(True):
    tx = make_tx(name, 0.01)
    step = step_loop.jitted_step(tx, grad_fn)
    params = as_tree([W0, B0])
    _, _, points = run(tx, step, steps, start, params=params)
  expected = np_rasgd(np_scheme, 0.01, steps, start)
  for t in range(steps):
    for key, i in (("w", 0), ("b", 1)):
      assert points[t][key].dtype == jnp.float64
      np.testing.assert_allclose(points[t][key], expected[t][i], rtol=0, atol=1e-12, err_msg=str(t))


@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_params_follow_the_unwrapped_optimizer_and_averaging_starts_at_the_switch(name, step_fns):
  tx, step = step_fns[name]
  inner = tx.init(as_tree([W0, B0])).inner_state
  make_scheme = SCHEMES[name][0]
  plain = (
    optax.sgd(0.01)
    if make_scheme is None
    else optax.chain(optax.sgd(0.01), rsgd.residual(make_scheme()))
  )
  params_plain, state_plain = as_tree([W0, B0]), inner
  params, state, points = run(tx, step, 6, start=4)
  for _ in range(6):
    updates, state_plain = plain.update(jax.grad(jax_loss)(params_plain), state_plain, params_plain)
    params_plain = optax.apply_updates(params_plain, updates)
  chex.assert_trees_all_close(params, params_plain, rtol=1e-6)  # the wrapper changes no update
  chex.assert_trees_all_close(state.inner_state, state_plain, rtol=1e-6, atol=1e-7)
  assert int(state.count) == 6 and int(state.start_step) == 4
  # The average holds exactly the two iterates after the switch.
  _, _, before = run(tx, step, 4, start=None)
  _, _, all_points = run(tx, step, 6, start=None)
  x5, x6 = all_points[4], all_points[5]
  chex.assert_trees_all_close(points[:4], before, rtol=1e-6)  # no averaging before the switch
  chex.assert_trees_all_close(points[5], jax.tree.map(lambda a, b: (a + b) / 2, x5, x6), rtol=1e-5)


@pytest.mark.parametrize("name", ["none", "sign"])
def test_eval_params_before_at_and_after_the_switch(name, step_fns):
  tx, step = step_fns[name]
  params, state, _ = run(tx, step, 3, start=None)
  x_before = eval_params(state, params)
  if name == "none":
    chex.assert_trees_all_equal(x_before, params)  # SGD + ASGD before the switch: the params
  else:
    chex.assert_trees_all_equal(x_before, rsgd.eval_params(state.inner_state, params))
    assert not np.allclose(x_before["w"], params["w"])  # x = y + r really differs from y
  switched = start_averaging(state)
  assert not bool(averaging_started(state)) and bool(averaging_started(switched))
  # Switched on but nothing averaged yet: still the current point.
  chex.assert_trees_all_equal(eval_params(switched, params), x_before)
  # After one averaged step the average is that step's point x_4 ...
  params4, state4 = step(params, switched)
  _, unswitched4 = step(params, state)
  chex.assert_trees_all_close(eval_params(state4, params4), eval_params(unswitched4, params4))
  # ... and after a second one it is not the current point any more.
  params5, state5 = step(params4, state4)
  _, unswitched5 = step(params4, unswitched4)
  assert not np.allclose(eval_params(state5, params5)["w"], eval_params(unswitched5, params5)["w"])
  # Under jit too (the choice is a jnp.where on the state).
  chex.assert_trees_all_close(jax.jit(eval_params)(state5, params5), eval_params(state5, params5))
  chex.assert_trees_all_close(jax.jit(eval_params)(state, params), x_before)


def test_start_averaging_is_idempotent(step_fns):
  tx, step = step_fns["scale"]
  _, state, _ = run(tx, step, 5, start=2)
  assert int(state.start_step) == 2
  again = start_averaging(state)
  assert int(again.start_step) == 2
  chex.assert_trees_all_equal(again, state)


def test_switching_retraces_nothing():
  traces = []
  tx = make_tx("topk", 0.01)

  @jax.jit
  def step(params, state):
    traces.append(1)
    updates, state = tx.update(jax.grad(jax_loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  params = as_tree([W0, B0])
  state = tx.init(params)
  for t in range(5):
    if t == 2:
      state = start_averaging(state)
    params, state = step(params, state)
  assert len(traces) == 1
  eval_traces = []

  @jax.jit
  def evaluate(state, params):
    eval_traces.append(1)
    return jax_loss(eval_params(state, params))

  evaluate(tx.init(params), params)
  evaluate(state, params)
  assert len(eval_traces) == 1


@pytest.mark.standard_promotion
@pytest.mark.parametrize("switch_before_save", [True, False], ids=["saved_after", "saved_before"])
def test_checkpoint_round_trip_across_the_switch_continues_bit_for_bit(
  tmp_path, step_fns, switch_before_save
):
  tx, step = step_fns["sign"]
  switch_at = 2 if switch_before_save else 4
  uninterrupted = run(tx, step, 7, start=switch_at)

  params, state, _ = run(tx, step, 3, start=switch_at)
  path = tmp_path / "ckpt.msgpack"
  path.write_bytes(serialization.to_bytes((params, state)))
  template = (as_tree([W0, B0]), tx.init(as_tree([W0, B0])))
  restored_params, restored_state = serialization.from_bytes(template, path.read_bytes())
  assert bool(averaging_started(restored_state)) == switch_before_save
  resumed = run(tx, step, 4, start=switch_at, params=restored_params, state=restored_state, first=3)

  chex.assert_trees_all_equal(resumed[:2], uninterrupted[:2])
  chex.assert_trees_all_equal(resumed[2], uninterrupted[2][3:])


@pytest.mark.standard_promotion
def test_inside_inject_hyperparams_and_with_extra_args():
  def make(learning_rate):
    return iterate_averaging(optax.chain(optax.sgd(learning_rate), rsgd.residual_scale(0.5)))

  tx = optax.inject_hyperparams(make)(learning_rate=0.01)
  params = as_tree([W0, B0])
  state = tx.init(params)
  for t in range(4):
    if t == 1:
      state = start_averaging(state)
      state.hyperparams["learning_rate"] = jnp.asarray(0.02)
    updates, state = tx.update(jax.grad(jax_loss)(params), state, params)
    params = optax.apply_updates(params, updates)
  assert int(find_averaging_state(state).start_step) == 1
  average = find_averaging_state(state).average
  chex.assert_trees_all_close(eval_params(state, params), average)
  # Extra arguments are forwarded to the wrapped transformation.
  tx2 = iterate_averaging(optax.sgd(0.1))
  updates, _ = tx2.update(
    {"w": jnp.ones(2)}, tx2.init({"w": jnp.zeros(2)}), {"w": jnp.zeros(2)}, value=1.0
  )
  np.testing.assert_allclose(updates["w"], -0.1)


class _Linear(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.dense = nnx.Linear(8, 1, rngs=rngs)

  def __call__(self, x):
    return self.dense(x)[:, 0]


def test_with_nnx_optimizer_switching_without_retrace():
  model = _Linear(nnx.Rngs(0))
  tx = iterate_averaging(optax.chain(optax.sgd(0.01), rsgd.residual_sign()))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  inputs, targets = jnp.asarray(A, jnp.float32), jnp.asarray(TARGET, jnp.float32)
  traces = []

  @nnx.jit
  def train_step(model, optimizer):
    traces.append(1)
    grads = nnx.grad(lambda m: jnp.mean((m(inputs) - targets) ** 2))(model)
    optimizer.update(model, grads)

  points = []
  for t in range(5):
    if t == 2:
      optimizer.opt_state = start_averaging(optimizer.opt_state)
    train_step(model, optimizer)
    points.append(eval_params(optimizer.opt_state, nnx.state(model, nnx.Param)))
  assert len(traces) == 1
  assert bool(averaging_started(optimizer.opt_state))
  # The NNX model's evaluation point is the mean of the last three RSGD points.
  plain = iterate_averaging(optax.chain(optax.sgd(0.01), rsgd.residual_sign()))
  model2 = _Linear(nnx.Rngs(0))
  optimizer2 = nnx.Optimizer(model2, plain, wrt=nnx.Param)
  xs = []
  for _ in range(5):
    train_step(model2, optimizer2)
    xs.append(eval_params(optimizer2.opt_state, nnx.state(model2, nnx.Param)))
  mean = jax.tree.map(lambda *v: sum(v) / 3, *xs[2:])
  chex.assert_trees_all_close(points[-1], mean, rtol=1e-5, atol=1e-7)
  graphdef, _, rest = nnx.split(model, nnx.Param, ...)
  shipped = nnx.merge(graphdef, points[-1], rest)
  assert isinstance(shipped.dense.kernel, nnx.Param)


def test_abstract_init_and_int_leaves():
  params = {
    "w": jax.ShapeDtypeStruct((64, 32), jnp.bfloat16),
    "step": jax.ShapeDtypeStruct((), jnp.int32),
  }
  tx = iterate_averaging(
    optax.chain(optax.sgd(0.1), rsgd.residual_sign()), average_dtype=jnp.float32
  )
  state = jax.eval_shape(tx.init, params)
  assert state.average["w"].dtype == jnp.float32 and state.average["w"].shape == (64, 32)
  assert isinstance(state.average["step"], optax.MaskedNode)
  assert state.count.dtype == jnp.int32 and state.start_step.dtype == jnp.int32
  # Concrete: bf16 params, float32 average, an integer leaf passing through.
  concrete = {"w": jnp.linspace(-1, 1, 8, dtype=jnp.bfloat16), "step": jnp.array(0)}
  state = start_averaging(tx.init(concrete))
  grads = {"w": jnp.full(8, 0.5, jnp.bfloat16), "step": jnp.array(0)}
  updates, state = tx.update(grads, state, concrete)
  new = optax.apply_updates(concrete, updates)
  out = eval_params(state, new)
  assert out["w"].dtype == jnp.bfloat16 and state.average["w"].dtype == jnp.float32
  chex.assert_trees_all_equal(out["step"], new["step"])


def test_user_errors_are_clear():
  with pytest.raises(ValueError, match="GradientTransformation"):
    iterate_averaging(lambda g: g)
  with pytest.raises(ValueError, match="average_dtype"):
    iterate_averaging(optax.sgd(0.1), average_dtype=jnp.int32)
  with pytest.raises(ValueError, match="which"):
    iterate_averaging(optax.sgd(0.1), which=True)
  tx = iterate_averaging(optax.sgd(0.1))
  params = {"w": jnp.ones(2)}
  with pytest.raises(ValueError, match="needs the parameters"):
    tx.update(params, tx.init(params))
  with pytest.raises(ValueError, match="another iterate_averaging"):
    iterate_averaging(tx).init(params)
  with pytest.raises(ValueError, match="found 0"):
    start_averaging(optax.sgd(0.1).init(params))
  outside = optax.chain(iterate_averaging(optax.sgd(0.1)), rsgd.residual_sign())
  with pytest.raises(ValueError, match="outside iterate_averaging"):
    eval_params(outside.init(params), params)
  with pytest.raises(ValueError, match="ResidualState"):
    eval_params(optax.sgd(0.1).init(params), params)


def test_without_averaging_eval_params_is_the_rsgd_point():
  steps = 3
  tx = optax.chain(optax.sgd(0.01), rsgd.residual_scale(0.5))
  _, _, points = run(tx, step_loop.jitted_step(tx, grad_fn), steps, start=None)
  xs, ys = reference.rsgd([W0, B0], np_grads, reference.sgd(0.01), reference.scaling(0.5), steps)
  for t in range(steps):
    np.testing.assert_allclose(points[t]["w"], xs[t][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(points[t]["b"], xs[t][1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(xs[-1][0], ys[-1][0], atol=1e-4)  # x really differs from y


# ---------------------------------------------------------------------------------------------
# Several views of one trajectory, each with its own average switched on at its own step.

VIEW_STARTS = {"asgd": 2, "rasgd-sign": 4, "rasgd-topk": None}


def views_tx(lr):
  return optax.named_chain(
    ("sgd", optax.sgd(lr)),
    ("asgd", iterate_averaging(optax.identity())),
    ("rasgd-sign", iterate_averaging(rsgd.residual_sign())),
    ("rasgd-topk", iterate_averaging(rsgd.residual_topk(0.25))),
  )


def test_views_in_one_chain_each_average_their_own_point_from_their_own_switch():
  steps = 6
  with enable_x64(True):
    tx = views_tx(0.01)

    def switch(t, state):
      for name, start in VIEW_STARTS.items():
        if t == start:
          state = start_averaging(state, which=name)
      return state

    # Fresh copies of the problem's constants: JAX may keep a float32 conversion of the module's
    # arrays from an earlier test, which would meet float64 params here.
    a, target = A.copy(), TARGET.copy()
    fresh_grad_fn = jax.grad(
      lambda params: 0.5 * jnp.sum((a @ params["w"] + params["b"].sum() - target) ** 2)
    )
    _, state, points = step_loop.run_jitted(
      step_loop.jitted_step(tx, fresh_grad_fn),
      as_tree([W0, B0]),
      tx.init(as_tree([W0, B0])),
      steps,
      before_step=switch,
      record=lambda params, state: {n: eval_params(state, params, which=n) for n in VIEW_STARTS},
    )
  schemes = {
    "asgd": None,
    "rasgd-sign": reference.scaled_sign(),
    "rasgd-topk": reference.top_k(0.25),
  }
  for name, start in VIEW_STARTS.items():
    assert bool(averaging_started(state, which=name)) == (start is not None)
    expected = np_rasgd(schemes[name], 0.01, steps, start)
    for t in range(steps):
      for key, i in (("w", 0), ("b", 1)):
        np.testing.assert_allclose(
          points[t][name][key], expected[t][i], rtol=0, atol=1e-12, err_msg=f"{name} {t}"
        )


def test_views_need_which_and_residuals_inside_their_averaging():
  params = as_tree([W0, B0])
  state = views_tx(0.01).init(params)
  with pytest.raises(ValueError, match="3 averaging states"):
    eval_params(state, params)
  with pytest.raises(ValueError, match="3 averaging states"):
    start_averaging(state)
  with pytest.raises(ValueError, match="matches 0 averaging states"):
    averaging_started(state, which="sign")
  switched = start_averaging(state, which=1)
  assert [bool(averaging_started(switched, which=i)) for i in range(3)] == [False, True, False]
  two_inside = optax.chain(
    optax.sgd(0.1),
    iterate_averaging(optax.identity()),
    iterate_averaging(optax.chain(rsgd.residual_sign(), rsgd.residual_scale(0.5))),
  )
  with pytest.raises(ValueError, match="at most one"):
    eval_params(two_inside.init(params), params, which=1)


# ---------------------------------------------------------------------------------------------
# The NT-ASGD trigger.


def awd_lstm_switch_epoch(val_losses, nonmono):
  """The AWD-LSTM training loop's bookkeeping, transcribed: the epoch at which it switches."""
  best_val_loss = []
  for epoch, val_loss in enumerate(val_losses):
    if len(best_val_loss) > nonmono and val_loss > min(best_val_loss[:-nonmono]):
      return epoch
    best_val_loss.append(val_loss)
  return None


def first_trigger(val_losses, nonmono):
  for k in range(len(val_losses)):
    if nonmonotone_trigger(val_losses[: k + 1], nonmono):
      return k
  return None


@pytest.mark.parametrize(
  ("losses", "nonmono", "expected"),
  [
    ([], 5, False),
    ([3.0], 5, False),
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 5, False),  # rising, but only 6 losses: too few to judge
    ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0], 5, True),  # 7.0 > min([1.0])
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 4.9], 5, False),  # 4.9 is better than the only old loss 5.0
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 5.0], 5, False),  # equal is not worse
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 5.1], 5, True),
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 4.5], 5, True),  # worse than min(5.0, 4.0)
    ([5.0, 4.0, 3.0, 2.0, 1.0, 0.5, 0.4, 3.9], 5, False),
    ([3.0, 2.0, 2.5], 1, False),  # 2.5 is compared with 3.0 only (2.0 is within the interval)
    ([3.0, 2.0, 3.5], 1, True),
    ([3.0, 2.0, 1.0, 2.5], 1, True),  # 2.5 > min(3.0, 2.0)
    ([3.0, 2.0, 1.0, 1.9], 1, False),
  ],
)
def test_trigger_on_crafted_losses(losses, nonmono, expected):
  assert nonmonotone_trigger(losses, nonmono) is expected
  assert nonmonotone_trigger(np.asarray(losses, np.float32), nonmono) is expected


@settings(max_examples=200, deadline=None)
@given(
  st.lists(st.floats(0.0, 10.0, allow_nan=False), max_size=20),
  st.integers(1, 6),
)
def test_trigger_switches_at_the_same_epoch_as_the_awd_lstm_loop(losses, nonmono):
  assert first_trigger(losses, nonmono) == awd_lstm_switch_epoch(losses, nonmono)


@pytest.mark.parametrize("nonmono", [0, -1, 2.5, True, "5"])
def test_trigger_rejects_a_bad_interval(nonmono):
  with pytest.raises(ValueError, match="nonmono"):
    nonmonotone_trigger([1.0] * 10, nonmono)
