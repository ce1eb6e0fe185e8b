"""The registry of optimizer names: each name against a NumPy transcription of the paper's update
rules; parsing of view lists, the refusal of mixed trajectories, one chain against separate
optimizers, one chain layout for one view or many."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import rsgd_optax as rsgd
from examples.common import optimizers
from examples.common.errors import UserError

LR, MOMENTUM, WD, ALPHA, FRACTION = 0.1, 0.9, 0.01, 1 / 16, 0.25
CURVATURE = {"a": np.array([1.0, 2.0, 0.5, 3.0]), "b": np.array([[0.3, 1.5], [2.5, 0.8]])}
START = {"a": np.array([1.0, -2.0, 0.5, 0.25]), "b": np.array([[-1.0, 0.7], [0.2, 1.2]])}
STEPS = 4


KEYS = sorted(START)


def _leaves(tree):
  return [tree[k] for k in KEYS]


def _grad(*w):
  """Gradient of 0.5 * sum(c * w**2) plus the L2 term PyTorch's SGD adds."""
  return [c * wi + WD * wi for c, wi in zip(_leaves(CURVATURE), w, strict=True)]


_BASE = {
  "sgd": lambda: reference.sgd(LR),
  "sgdm": lambda: reference.sgd(LR, MOMENTUM),
  "adagrad": lambda: reference.adagrad(LR),
  "adam": lambda: reference.adam(LR),
}
_BASE.update(rsgd=_BASE["sgd"], rsgdm=_BASE["sgdm"], signsgd=_BASE["sgd"], signsgdm=_BASE["sgdm"])
_SCHEME = {
  "scale": lambda: reference.scaling(ALPHA),
  "sign": lambda: reference.scaled_sign(),
  "topk": lambda: reference.top_k(FRACTION),
}


def _reference(name):
  """NumPy run of ``name``: returns (params after STEPS, point the model is evaluated at)."""
  start = _leaves(START)
  if name.startswith("ef-"):
    base = _BASE[name[3:]]()
    w = reference.error_feedback(start, _grad, base, reference.scaled_sign(), STEPS)[-1]
    evaluated = w
  elif name.startswith("signsgd"):
    base = _BASE[name]()
    w = reference.error_feedback(start, _grad, base, reference.scaled_sign(), STEPS, memory=False)
    w = evaluated = w[-1]
  elif "-" in name:  # a residual: params follow y, the model is evaluated at x = y + r
    family, kind = name.split("-")[:2]
    xs, ys = reference.rsgd(start, _grad, _BASE[family](), _SCHEME[kind](), STEPS)
    w, evaluated = ys[-1], xs[-1]
  else:
    w = evaluated = reference.base_run(start, _grad, _BASE[name](), STEPS)[-1]
  return dict(zip(KEYS, w, strict=True)), dict(zip(KEYS, evaluated, strict=True))


# Adam's first steps have equal-magnitude entries (about lr * sign), so top-k's choice among ties
# rests on float32 rounding; adam-topk gets its own tie-free test below.
# AdamW's decoupled decay needs the iterate itself, not only the gradient: its own test below.
_EXACT = [n for n in optimizers.OPTIMIZER_NAMES if n != "adam-topk" and not n.startswith("adamw")]


@pytest.mark.parametrize("name", _EXACT)
def test_matches_numpy_reference(name):
  tx = optimizers.make_optimizer(
    name, LR, momentum=MOMENTUM, weight_decay=WD, alpha=ALPHA, topk_fraction=FRACTION
  )
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), START)
  state = tx.init(params)
  curvature = jax.tree.map(jnp.asarray, CURVATURE)
  for _ in range(STEPS):
    grads = jax.tree.map(lambda c, w: c * w, curvature, params)  # the L2 term comes from the tx
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)
  want_params, want_eval = _reference(name)
  np.testing.assert_allclose(params["a"], want_params["a"], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(params["b"], want_params["b"], rtol=1e-4, atol=1e-5)
  if optimizers.has_residual(name):
    evaluated = rsgd.eval_params(state, params)
    for k in START:
      np.testing.assert_allclose(evaluated[k], want_eval[k], rtol=1e-4, atol=1e-5)
    assert not np.allclose(evaluated["a"], params["a"])  # the residual really moved the model


def test_adam_topk_follows_adam_and_moves_k_entries_per_step():
  adam, adam_topk = (
    optimizers.make_optimizer(n, LR, topk_fraction=FRACTION) for n in ("adam", "adam-topk")
  )
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), START)
  ref_params, ref_state, state = params, adam.init(params), adam_topk.init(params)
  curvature = jax.tree.map(jnp.asarray, CURVATURE)
  evaluated = params
  for _ in range(STEPS):
    grads = jax.tree.map(lambda c, w: c * w, curvature, params)
    updates, state = adam_topk.update(grads, state, params)
    params = optax.apply_updates(params, updates)
    ref_updates, ref_state = adam.update(grads, ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, ref_updates)
    new_evaluated = rsgd.eval_params(state, params)
    for k in START:  # x moves by top-k(delta): exactly k = 1 entry per 4-entry leaf
      moved = jnp.abs(new_evaluated[k] - evaluated[k]) > 1e-5  # above float32 rounding of y + r
      assert int(jnp.sum(moved)) == 1
    evaluated = new_evaluated
  for k in START:
    np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-6)


def test_schedule_is_accepted_and_decays():
  schedule = optimizers.step_decay_schedule(0.1, steps_per_epoch=10, decay_epochs=(1, 2))
  assert float(schedule(9)) == pytest.approx(0.1)
  assert float(schedule(10)) == pytest.approx(0.01)
  assert float(schedule(25)) == pytest.approx(0.001)
  tx = optimizers.make_optimizer("rsgdm-sign", schedule)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.ones(3)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.1 * np.ones(3), rtol=1e-6)


def test_unknown_name_lists_valid_names():
  with pytest.raises(UserError, match=r"Unknown optimizer 'rsgd-foo'.*rsgdm-scale.*adam-topk"):
    optimizers.make_optimizer("rsgd-foo", 0.1)


def test_bad_hyperparameters_are_rejected():
  with pytest.raises(UserError, match="weight_decay"):
    optimizers.make_optimizer("sgd", 0.1, weight_decay=-1.0)
  with pytest.raises(UserError, match="momentum"):
    optimizers.make_optimizer("sgdm", 0.1, momentum=1.5)


def test_parse_assigns_residual_indices_in_order():
  parsed = optimizers.parse_views("sgdm, rsgdm-scale@0.25,rsgdm-sign,rsgdm-topk@0.05")
  assert [v.name for v in parsed] == ["sgdm", "rsgdm-scale@0.25", "rsgdm-sign", "rsgdm-topk@0.05"]
  assert [v.optimizer for v in parsed] == ["sgdm", "rsgdm-scale", "rsgdm-sign", "rsgdm-topk"]
  assert [v.setting for v in parsed] == [None, 0.25, None, 0.05]
  assert [v.which for v in parsed] == [None, 0, 1, 2]


@pytest.mark.parametrize(
  ("spec", "message"),
  [
    (
      "sgdm,adam",
      r"do not share one trajectory: sgdm follows SGD with momentum's trajectory; adam follows "
      r"Adam's trajectory\.",
    ),
    (
      "sgdm,signsgdm",
      r"sgdm follows SGD with momentum's trajectory; signsgdm moves the model by its compressed "
      r"step \(its own trajectory\)",
    ),
    (
      "sgd,rsgdm-scale",
      r"sgd follows plain SGD's trajectory; rsgdm-scale follows SGD with momentum's trajectory "
      r"\(sgdm\)",
    ),
    ("sgdm,ef-signsgdm", r"ef-signsgdm moves the model by its compressed step"),
    ("sgdm,rsgdm-sign,sgdm", r"names sgdm more than once"),
    ("rsgdm-sign@0.5", r"only \*-scale \(alpha\) and \*-topk \(fraction\) views take an @"),
    ("rsgdm-scale@2", r"must be a finite number in \(0, 1\], got 2"),
    ("rsgdm-scale@x", r"must be a number, got 'x'"),
    ("sgdm,,rsgdm-sign", r"has an empty name"),
    ("sgdm,rsgdm-bogus", r"Unknown optimizer 'rsgdm-bogus'"),
  ],
)
def test_lists_that_cannot_share_a_training_are_refused(spec, message):
  with pytest.raises(UserError, match=message):
    optimizers.parse_views(spec)


def test_group_by_trajectory():
  names = ["sgd", "sgdm", "rsgd-sign", "rsgdm-scale@0.5", "signsgdm", "adam", "adam-topk", "sgdm2"]
  with pytest.raises(UserError, match="Unknown optimizer 'sgdm2'"):
    optimizers.group_by_trajectory(names)
  assert optimizers.group_by_trajectory(names[:-1]) == [
    ["sgd", "rsgd-sign"],
    ["sgdm", "rsgdm-scale@0.5"],
    ["signsgdm"],
    ["adam", "adam-topk"],
  ]


def _run(tx, steps=6):
  """A few steps on a fixed least-squares problem, gradients at params (the Optax loop)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(16, 40)), jnp.float32)
  b = jnp.asarray(rng.normal(size=16), jnp.float32)
  params = {"w": jnp.zeros(40), "v": jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)}

  def loss(p):
    return jnp.mean((a @ p["w"] - b) ** 2) + jnp.sum(p["v"] ** 4)

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


@pytest.mark.parametrize("base", ["sgdm", "sgd", "adam"])
def test_one_chain_equals_each_optimizer_alone(base):
  prefix = {"sgdm": "rsgdm", "sgd": "rsgd", "adam": "adam"}[base]
  names = [base, f"{prefix}-scale", f"{prefix}-sign", f"{prefix}-topk", f"{prefix}-scale@0.5"]
  kwargs = dict(weight_decay=1e-3, alpha=0.25, topk_fraction=0.1)
  parsed = optimizers.parse_views(",".join(names))
  shared_params, shared_state = _run(optimizers.make_optimizer(parsed, 0.05, **kwargs))
  for view in parsed:
    alone_kwargs = dict(kwargs)
    if view.setting is not None:
      alone_kwargs["alpha"] = view.setting
    alone = optimizers.make_optimizer(view.optimizer, 0.05, **alone_kwargs)
    params, state = _run(alone)
    jax.tree.map(np.testing.assert_array_equal, shared_params, params)
    if view.has_residual:
      jax.tree.map(
        np.testing.assert_array_equal,
        rsgd.eval_params(shared_state, shared_params, which=view.which),
        rsgd.eval_params(state, params),
      )
  # The views differ from each other (else the test above could not fail for a wrong `which`).
  points = [rsgd.eval_params(shared_state, shared_params, which=i) for i in range(4)]
  for i in range(4):
    for j in range(i):
      assert not np.array_equal(points[i]["w"], points[j]["w"])


def test_one_view_has_the_chain_layout_of_a_list():
  """One layout for one view or many: a name alone has the state a list holding it has (the base
  view adds nothing), so its checkpoints and ``which`` indices are the same either way."""
  params = {"w": jnp.zeros(3)}
  for alone, listed in (
    ("rsgdm-topk@0.05", "sgdm,rsgdm-topk@0.05"),
    ("adam-sign", "adam,adam-sign"),
  ):
    one = optimizers.make_optimizer(alone, 0.1).init(params)
    many = optimizers.make_optimizer(listed, 0.1).init(params)
    assert jax.tree.structure(one) == jax.tree.structure(many)
  (view,) = optimizers.parse_views("rsgdm-topk@0.05")
  tx = optimizers.make_optimizer([view], 0.1, topk_fraction=0.5)
  reference = optimizers.make_optimizer("rsgdm-topk", 0.1, topk_fraction=0.05)
  params, state = _run(tx)
  ref_params, ref_state = _run(reference)
  jax.tree.map(
    np.testing.assert_array_equal,
    rsgd.eval_params(state, params),
    rsgd.eval_params(ref_state, ref_params),
  )


def test_registry_entries():
  assert optimizers.lookup("rsgdm-scale") == optimizers.OptimizerName(
    "rsgdm-scale", "sgdm", "residual", "scale"
  )
  assert [
    optimizers.trajectory(n) for n in ("rsgd-sign", "adam-topk", "signsgdm", "ef-signsgd")
  ] == [
    "sgd",
    "adam",
    "signsgdm",
    "ef-signsgd",
  ]
  assert optimizers.lookup("rsgdm-topk").setting == "topk_fraction"
  assert optimizers.lookup("rsgdm-sign").setting is None


@pytest.mark.parametrize("name", ["adamw", "adamw-scale", "adamw-sign"])
def test_adamw_decays_the_matrices_decoupled_and_clips_first(name):
  """AdamW (b2 = 0.95) after clipping to a global norm, decay ``-lr wd y`` on matrices only."""
  clip = 0.5
  tx = optimizers.make_optimizer(
    name, LR, weight_decay=WD, alpha=ALPHA, topk_fraction=FRACTION, clip_norm=clip
  )
  params = jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), START)
  state = tx.init(params)
  for _ in range(STEPS):
    grads = jax.tree.map(lambda c, w: jnp.asarray(c, jnp.float32) * w, CURVATURE, params)
    updates, state = tx.update(grads, state, params)
    params = optax.apply_updates(params, updates)

  # The reference: the base update needs y, which reference.rsgd hands only to the gradient.
  current = {}

  def grad(*w):
    current["y"] = w
    g = [c * wi for c, wi in zip(_leaves(CURVATURE), w, strict=True)]
    norm = np.sqrt(sum(np.sum(gi**2) for gi in g))
    return [gi * min(1.0, clip / norm) for gi in g]

  adam = reference.adam(LR, b2=0.95)

  def adamw(g, t):
    return [u - LR * WD * y * (y.ndim >= 2) for u, y in zip(adam(g, t), current["y"], strict=True)]

  start = _leaves(START)
  if name == "adamw":
    want_y = want_x = reference.base_run(start, grad, adamw, STEPS)[-1]
  else:
    xs, ys = reference.rsgd(start, grad, adamw, _SCHEME[name.split("-")[1]](), STEPS)
    want_y, want_x = ys[-1], xs[-1]
    evaluated = rsgd.eval_params(state, params)
    for k, want in zip(KEYS, want_x, strict=True):
      np.testing.assert_allclose(evaluated[k], want, rtol=1e-4, atol=1e-5)
  for k, want in zip(KEYS, want_y, strict=True):
    np.testing.assert_allclose(params[k], want, rtol=1e-4, atol=1e-5)


def test_a_negative_clip_norm_is_refused():
  with pytest.raises(UserError, match="clip_norm must be >= 0"):
    optimizers.make_optimizer("adamw", LR, clip_norm=-1.0)
