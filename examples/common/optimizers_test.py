"""Each named optimizer against a NumPy transcription of the paper's update rules."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference

import rsgd_optax as rsgd
from examples.common import optimizers

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
_EXACT = [n for n in optimizers.OPTIMIZER_NAMES if n != "adam-topk"]


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
  with pytest.raises(ValueError, match=r"Unknown optimizer 'rsgd-foo'.*rsgdm-scale.*adam-topk"):
    optimizers.make_optimizer("rsgd-foo", 0.1)


def test_bad_hyperparameters_are_rejected():
  with pytest.raises(ValueError, match="weight_decay"):
    optimizers.make_optimizer("sgd", 0.1, weight_decay=-1.0)
  with pytest.raises(ValueError, match="momentum"):
    optimizers.make_optimizer("sgdm", 0.1, momentum=1.5)
