"""Tests of the residual transformations against the paper's Algorithm 1 written in NumPy."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import step_loop
from jax_compat import enable_x64

import rsgd_optax as rsgd

# A least-squares problem with two parameter leaves of different sizes.
RNG = np.random.default_rng(0)
A_W = RNG.normal(size=(12, 6, 5))
A_B = RNG.normal(size=(12, 5))
TARGET = RNG.normal(size=(12,))
X0 = [RNG.normal(size=(6, 5)), RNG.normal(size=(5,))]


def np_grad(w, b):
  resid = np.einsum("nij,ij->n", A_W, w) + A_B @ b - TARGET
  return [np.einsum("n,nij->ij", resid, A_W), A_B.T @ resid]


def jax_loss(params):
  w, b = params["w"], params["b"]
  resid = jnp.einsum("nij,ij->n", A_W, w) + A_B @ b - TARGET
  return 0.5 * jnp.sum(resid**2)


def grad_fn(params):
  return jax.grad(jax_loss)(params)


def run_optax(tx, steps, params=None):
  """Runs tx on the least-squares problem; returns params (y), eval_params (x) and the state."""
  params = params or {"w": jnp.asarray(X0[0]), "b": jnp.asarray(X0[1])}
  _, state, history = step_loop.run_jitted(
    step_loop.jitted_step(tx, grad_fn),
    params,
    tx.init(params),
    steps,
    record=lambda params, state: (params, rsgd.eval_params(state, params)),
  )
  return [y for y, _ in history], [x for _, x in history], state


SCHEMES = {
  "scale": (lambda: rsgd.scaling(1 / 16), reference.scaling(1 / 16)),
  "scale_quarter": (lambda: rsgd.scaling(0.25), reference.scaling(0.25)),
  "sign": (lambda: rsgd.scaled_sign(), reference.scaled_sign(True)),
  "sign_global": (lambda: rsgd.scaled_sign(per_leaf=False), reference.scaled_sign(False)),
  # Blocks of 4: "w" (30 entries) ends with a block of 2, "b" (5) with a block of 1.
  "sign_blocks": (lambda: rsgd.scaled_sign(block_size=4), reference.scaled_sign(True, 4)),
  "topk": (lambda: rsgd.top_k(0.1), reference.top_k(0.1, True)),
  "topk_global": (lambda: rsgd.top_k(0.2, per_leaf=False), reference.top_k(0.2, False)),
}


@pytest.mark.parametrize("momentum", [0.0, 0.9], ids=["sgd", "sgdm"])
@pytest.mark.parametrize("name", sorted(SCHEMES))
def test_matches_algorithm_1_in_float64(name, momentum):
  make_scheme, np_scheme = SCHEMES[name]
  lr, steps = 0.01, 6
  with enable_x64(True):
    tx = optax.chain(optax.sgd(lr, momentum=momentum or None), rsgd.residual(make_scheme()))
    ys, xs, _ = run_optax(tx, steps)
    ref_xs, ref_ys = reference.rsgd(X0, np_grad, reference.sgd(lr, momentum), np_scheme, steps)
    for t in range(steps):
      for key, i in (("w", 0), ("b", 1)):
        assert ys[t][key].dtype == jnp.float64
        np.testing.assert_allclose(ys[t][key], ref_ys[t][i], rtol=0, atol=1e-9, err_msg=f"y {t}")
        np.testing.assert_allclose(xs[t][key], ref_xs[t][i], rtol=0, atol=1e-9, err_msg=f"x {t}")
    # The residual is not trivially zero: x and y really differ.
    assert np.abs(np.asarray(xs[-1]["w"]) - np.asarray(ys[-1]["w"])).max() > 1e-6


def test_residual_sign_with_blocks_matches_algorithm_1_with_the_blockwise_scheme():
  lr, steps = 0.01, 4
  with enable_x64(True):
    tx = optax.chain(optax.sgd(lr, momentum=0.9), rsgd.residual_sign(block_size=4))
    _, xs, _ = run_optax(tx, steps)
    ref_xs, _ = reference.rsgd(
      X0, np_grad, reference.sgd(lr, 0.9), reference.scaled_sign(True, 4), steps
    )
  one_scale, _ = reference.rsgd(X0, np_grad, reference.sgd(lr, 0.9), reference.scaled_sign(), steps)
  for t in range(steps):
    for key, i in (("w", 0), ("b", 1)):
      np.testing.assert_allclose(xs[t][key], ref_xs[t][i], rtol=0, atol=1e-9, err_msg=f"x {t}")
  # The blocks change the trajectory: one scale a leaf would not give these points.
  assert np.abs(ref_xs[-1][0] - one_scale[-1][0]).max() > 1e-6


def test_scaling_is_an_ema_of_the_base_iterates_and_params_are_plain_sgd():
  alpha, steps = 0.2, 8
  base = optax.sgd(0.02, momentum=0.9)
  plain_ys, _, _ = run_optax_plain(base, steps)
  ys, xs, _ = run_optax(optax.chain(base, rsgd.residual_scale(alpha)), steps)
  ema = {k: jnp.asarray(v) for k, v in zip(("w", "b"), X0, strict=True)}
  for t in range(steps):
    # params follow the base optimizer bit for bit
    chex.assert_trees_all_equal(ys[t], plain_ys[t])
    ema = jax.tree.map(lambda e, y: (1 - alpha) * e + alpha * y, ema, plain_ys[t])
    chex.assert_trees_all_close(xs[t], ema, rtol=1e-5, atol=1e-6)


def run_optax_plain(tx, steps):
  params = {"w": jnp.asarray(X0[0]), "b": jnp.asarray(X0[1])}
  _, state, ys = step_loop.run_jitted(
    step_loop.jitted_step(tx, grad_fn), params, tx.init(params), steps
  )
  return ys, None, state


@pytest.mark.parametrize("memory", [True, False], ids=["error_feedback", "compress"])
def test_error_feedback_and_compress_match_their_references(memory):
  lr, steps = 0.01, 5
  with enable_x64(True):
    wrap = rsgd.error_feedback if memory else rsgd.compress
    tx = optax.chain(optax.sgd(lr), wrap(rsgd.scaled_sign()))
    ys, _, _ = run_optax_plain(tx, steps)
    ref = reference.error_feedback(
      X0, np_grad, reference.sgd(lr), reference.scaled_sign(True), steps, memory=memory
    )
    for t in range(steps):
      np.testing.assert_allclose(ys[t]["w"], ref[t][0], rtol=0, atol=1e-9)
      np.testing.assert_allclose(ys[t]["b"], ref[t][1], rtol=0, atol=1e-9)


def test_error_feedback_and_rsgd_differ_after_one_step():
  base = optax.sgd(0.05)
  rs_ys, rs_xs, _ = run_optax(optax.chain(base, rsgd.residual_sign()), 2)
  ef_ys, _, _ = run_optax_plain(optax.chain(base, rsgd.error_feedback(rsgd.scaled_sign())), 2)
  # After one step both shipped points agree (x_1 = x_0 - R(-u_0)), but RSGD's params are the SGD
  # point while EF's params are the compressed point; the second gradients are taken at different
  # points, so the trajectories separate.
  chex.assert_trees_all_close(rs_xs[0], ef_ys[0], rtol=1e-6, atol=1e-6)
  assert not np.allclose(rs_ys[0]["w"], ef_ys[0]["w"], atol=1e-4)
  assert not np.allclose(rs_xs[1]["w"], ef_ys[1]["w"], atol=1e-6)


BASES = {
  "sgd": lambda: optax.sgd(0.02),
  "momentum": lambda: optax.sgd(0.02, momentum=0.9),
  "nesterov": lambda: optax.sgd(0.02, momentum=0.9, nesterov=True),
  "adam": lambda: optax.adam(1e-2),
  "adagrad": lambda: optax.adagrad(5e-2),
  "schedule": lambda: optax.sgd(
    optax.piecewise_constant_schedule(0.05, {2: 0.1, 4: 0.1}), momentum=0.9
  ),
}


@pytest.mark.standard_promotion
@pytest.mark.parametrize("base", sorted(BASES))
def test_after_any_base_optimizer_params_are_the_base_run_and_x_follows_the_scheme(base):
  steps = 6
  plain_ys, _, _ = run_optax_plain(BASES[base](), steps)
  ys, xs, _ = run_optax(optax.chain(BASES[base](), rsgd.residual_sign()), steps)
  x = [np.asarray(v) for v in X0]
  for t in range(steps):
    if jax.default_backend() == "cpu":
      chex.assert_trees_all_equal(ys[t], plain_ys[t])
    else:  # a GPU build may contract the chained step's arithmetic differently (about 1 ulp)
      chex.assert_trees_all_close(ys[t], plain_ys[t], rtol=1e-5, atol=0)
    # x_{t+1} = x_t - R(x_t - y_{t+1}), recomputed in NumPy from the recorded base iterates
    y = [np.asarray(ys[t]["w"]), np.asarray(ys[t]["b"])]
    p = reference.scaled_sign(True)([xi - yi for xi, yi in zip(x, y, strict=True)])
    x = [xi - pi for xi, pi in zip(x, p, strict=True)]
    np.testing.assert_allclose(xs[t]["w"], x[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xs[t]["b"], x[1], rtol=1e-5, atol=1e-6)


@pytest.mark.standard_promotion
def test_alpha_can_be_an_injected_hyperparameter():
  tx = optax.inject_hyperparams(rsgd.residual_scale)(alpha=0.25)
  params = {"w": jnp.zeros(2)}
  state = tx.init(params)
  update = jax.jit(tx.update)
  _, state = update({"w": jnp.ones(2)}, state)
  np.testing.assert_allclose(rsgd.find_residual_state(state).residual["w"], -0.75)
  state.hyperparams["alpha"] = jnp.full_like(
    state.hyperparams["alpha"], 0.5
  )  # changed between steps without re-jitting
  _, state = update({"w": jnp.ones(2)}, state)
  np.testing.assert_allclose(rsgd.find_residual_state(state).residual["w"], 0.5 * (-0.75 - 1.0))
  assert update._cache_size() == 1


def test_top_k_fraction_cannot_be_traced():
  tx = optax.inject_hyperparams(rsgd.residual_topk)(fraction=0.5)
  with pytest.raises(ValueError, match="static_args"):
    jax.jit(tx.init)({"w": jnp.zeros(2)})
  tx = optax.inject_hyperparams(rsgd.residual_topk, static_args=("fraction",))(fraction=0.5)
  tx.update({"w": jnp.ones(2)}, jax.jit(tx.init)({"w": jnp.zeros(2)}))


def test_scheduled_alpha_uses_the_step_count():
  schedule = optax.linear_schedule(1.0, 0.5, transition_steps=4)
  tx = rsgd.residual_scale(schedule)
  params = {"w": jnp.zeros(3)}
  state = tx.init(params)
  r = np.zeros(3)
  for t in range(5):
    u = {"w": jnp.full(3, float(t + 1))}
    _, state = jax.jit(tx.update)(u, state)
    r = (1 - float(schedule(t))) * (r - (t + 1))
    np.testing.assert_allclose(state.residual["w"], r, rtol=1e-6)
  assert int(state.count) == 5


# ---------------------------------------------------------------------------------------------
# Where the residual state may sit, and eval_params / proximity.


def tiny_params():
  return {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}


def one_step(tx, params=None, grads=None):
  params = params if params is not None else tiny_params()
  grads = grads if grads is not None else jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  state = tx.init(params)
  updates, state = tx.update(grads, state, params)
  return optax.apply_updates(params, updates), state


NESTINGS = {
  "chain": lambda r: optax.chain(optax.sgd(0.1), r),
  "nested_chain": lambda r: optax.chain(optax.chain(optax.sgd(0.1), optax.chain(r))),
  "named_chain": lambda r: optax.named_chain(("base", optax.sgd(0.1)), ("res", r)),
  "inject_hyperparams": lambda r: optax.inject_hyperparams(
    lambda learning_rate: optax.chain(optax.sgd(learning_rate), r)
  )(learning_rate=0.1),
  "masked": lambda r: optax.chain(optax.sgd(0.1), optax.masked(r, {"w": True, "b": False})),
  "multi_steps": lambda r: optax.MultiSteps(optax.chain(optax.sgd(0.1), r), every_k_schedule=1),
  "apply_if_finite": lambda r: optax.apply_if_finite(optax.chain(optax.sgd(0.1), r), 3),
}


@pytest.mark.standard_promotion
@pytest.mark.parametrize("nesting", sorted(NESTINGS))
def test_eval_params_finds_the_residual_in_nested_states(nesting):
  params, state = one_step(NESTINGS[nesting](rsgd.residual_scale(0.25)))
  x = rsgd.eval_params(state, params)
  # one step from x_0 = y_0: x_1 = 0.75 y_0 + 0.25 y_1
  y0 = tiny_params()
  expected_w = 0.75 * y0["w"] + 0.25 * params["w"]
  np.testing.assert_allclose(x["w"], expected_w, rtol=1e-6)
  if nesting == "masked":  # the masked-out leaf carries no residual
    chex.assert_trees_all_equal(x["b"], params["b"])
  else:
    np.testing.assert_allclose(x["b"], 0.75 * y0["b"] + 0.25 * params["b"], rtol=1e-6)
  assert float(rsgd.proximity(state, params)) > 0


def test_several_residuals_follow_one_trajectory_and_are_chosen_by_which():
  tx = optax.named_chain(
    ("base", optax.sgd(0.1)), ("scale", rsgd.residual_scale(0.5)), ("sign", rsgd.residual_sign())
  )
  params, state = one_step(tx)
  with pytest.raises(ValueError, match="2 residual states"):
    rsgd.eval_params(state, params)
  by_name = rsgd.eval_params(state, params, which="scale")
  chex.assert_trees_all_close(by_name, rsgd.eval_params(state, params, which=0))
  y0 = tiny_params()
  chex.assert_trees_all_close(by_name, jax.tree.map(lambda a, b: (a + b) / 2, y0, params))
  assert not np.allclose(rsgd.eval_params(state, params, which="sign")["w"], by_name["w"])
  with pytest.raises(ValueError, match="out of range"):
    rsgd.eval_params(state, params, which=2)


def test_eval_params_without_a_residual_state_says_so():
  params, state = one_step(optax.sgd(0.1))
  with pytest.raises(ValueError, match="holds no ResidualState"):
    rsgd.eval_params(state, params)


def test_eval_params_rejects_params_of_another_model():
  _, state = one_step(optax.chain(optax.sgd(0.1), rsgd.residual_scale(0.5)))
  with pytest.raises(ValueError, match=r"\['other'\] has no leaf in the optimizer state"):
    rsgd.eval_params(state, {"other": jnp.ones(3)})
  with pytest.raises(ValueError, match="no parameter matches"):
    rsgd.eval_params(state, {"w": jnp.ones((2, 3))})
  with pytest.raises(ValueError, match="shape"):
    rsgd.eval_params(state, {"w": jnp.ones((3, 2)), "b": jnp.ones(3)})


@pytest.mark.parametrize("read", [rsgd.eval_params, rsgd.proximity])
def test_params_with_a_leaf_the_state_lacks_are_refused_by_name(read):
  params, state = one_step(optax.chain(optax.sgd(0.1), rsgd.residual_scale(0.5)))
  read(state, params)  # the params the state was built for
  read(state, {**params, "n": jnp.arange(3)})  # an integer leaf carries no residual anywhere
  with pytest.raises(ValueError, match=r"\['c'\] has no leaf in the optimizer state"):
    read(state, {**params, "c": jnp.ones(2)})


def test_which_messages_name_each_state_by_index_and_place_or_name():
  params, state = one_step(optax.chain(optax.sgd(0.1), rsgd.residual_scale(0.5)))
  with pytest.raises(ValueError, match=r"holds 1 residual state: index 0 \(at chain\[1\]\)\.$"):
    rsgd.eval_params(state, params, which=3)
  named = optax.named_chain(
    ("base", optax.sgd(0.1)), ("ema", rsgd.residual_scale(0.5)), ("sign", rsgd.residual_sign())
  )
  params, state = one_step(named)
  with pytest.raises(ValueError, match=r"2 residual states: 'ema' \(index 0\), 'sign' \(index 1\)"):
    rsgd.eval_params(state, params)
  for which in (True, 1.0):
    with pytest.raises(ValueError, match="must be None, an int or a str"):
      rsgd.eval_params(state, params, which=which)


def test_proximity_is_the_normalized_distance():
  params, state = one_step(optax.chain(optax.sgd(0.3, momentum=0.9), rsgd.residual_topk(0.5)))
  x = rsgd.eval_params(state, params)
  diff = np.concatenate([np.ravel(x[k] - params[k]) for k in params])
  y = np.concatenate([np.ravel(params[k]) for k in params])
  np.testing.assert_allclose(
    rsgd.proximity(state, params), np.linalg.norm(diff) / np.linalg.norm(y), rtol=1e-5
  )


@pytest.mark.standard_promotion
def test_apply_if_finite_skips_a_nan_step_and_keeps_the_residual():
  tx = optax.apply_if_finite(optax.chain(optax.sgd(0.1), rsgd.residual_scale(0.5)), 5)
  params, state = one_step(tx)
  before = rsgd.find_residual_state(state)
  nan_grads = jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), params)
  updates, state = jax.jit(tx.update)(nan_grads, state, params)
  chex.assert_trees_all_equal(rsgd.find_residual_state(state), before)
  chex.assert_trees_all_equal(updates, jax.tree.map(jnp.zeros_like, params))


# ---------------------------------------------------------------------------------------------
# Validation.


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5, float("nan"), True, "0.1"])
def test_bad_alpha_is_rejected_at_construction(alpha):
  with pytest.raises(ValueError, match="alpha"):
    rsgd.residual_scale(alpha)


def test_alpha_schedule_starting_outside_the_interval_is_rejected():
  with pytest.raises(ValueError, match="schedule"):
    rsgd.residual_scale(optax.constant_schedule(2.0))


@pytest.mark.parametrize("fraction", [0.0, 1.01, -1.0])
def test_bad_fraction_is_rejected_at_construction(fraction):
  with pytest.raises(ValueError, match="fraction"):
    rsgd.residual_topk(fraction)


@pytest.mark.parametrize("make", [rsgd.residual, rsgd.error_feedback, rsgd.compress])
def test_non_callable_scheme_is_rejected(make):
  with pytest.raises(ValueError, match="callable"):
    make(0.5)


def test_bad_residual_dtype_is_rejected():
  with pytest.raises(ValueError, match="residual_dtype"):
    rsgd.residual_scale(0.5, residual_dtype=jnp.int32)


def test_scheme_changing_the_structure_is_named_at_first_update():
  def drops_bias(tree):
    return {"w": tree["w"]}

  tx = optax.chain(optax.sgd(0.1), rsgd.residual(drops_bias))
  with pytest.raises(ValueError, match=r"\['b'\]"):
    one_step(tx)

  def reshapes(tree):
    return jax.tree.map(lambda v: v.reshape(-1), tree)

  with pytest.raises(ValueError, match=r"shape of leaf \['w'\]"):
    one_step(optax.chain(optax.sgd(0.1), rsgd.residual(reshapes)))


def test_user_callable_scheme():
  halve = lambda tree: jax.tree.map(lambda v: v / 2, tree)
  params, state = one_step(optax.chain(optax.sgd(0.1), rsgd.residual(halve)))
  reference, ref_state = one_step(optax.chain(optax.sgd(0.1), rsgd.residual_scale(0.5)))
  chex.assert_trees_all_close(
    rsgd.eval_params(state, params), rsgd.eval_params(ref_state, reference)
  )
