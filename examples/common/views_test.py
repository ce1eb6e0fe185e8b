"""Views: parsing, the refusal of mixed trajectories, and one chain against separate optimizers."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import rsgd_optax as rsgd
from examples.common import optimizers, views


def test_parse_assigns_residual_indices_in_order():
  parsed = views.parse_views("sgdm, rsgdm-scale@0.25,rsgdm-sign,rsgdm-topk@0.05")
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
    ("rsgdm-scale@2", r"must be in \(0, 1\], got 2.0"),
    ("rsgdm-scale@x", r"must be a number, got 'x'"),
    ("sgdm,,rsgdm-sign", r"has an empty name"),
    ("sgdm,rsgdm-bogus", r"Unknown optimizer 'rsgdm-bogus'"),
  ],
)
def test_lists_that_cannot_share_a_training_are_refused(spec, message):
  with pytest.raises(ValueError, match=message):
    views.parse_views(spec)


def test_group_by_trajectory():
  names = ["sgd", "sgdm", "rsgd-sign", "rsgdm-scale@0.5", "signsgdm", "adam", "adam-topk", "sgdm2"]
  with pytest.raises(ValueError, match="Unknown optimizer 'sgdm2'"):
    views.group_by_trajectory(names)
  assert views.group_by_trajectory(names[:-1]) == [
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
  parsed = views.parse_views(",".join(names))
  shared_params, shared_state = _run(views.make_optimizer(parsed, 0.05, **kwargs))
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


def test_one_view_builds_todays_chain():
  (view,) = views.parse_views("rsgdm-topk@0.05")
  tx = views.make_optimizer([view], 0.1, topk_fraction=0.5)
  reference = optimizers.make_optimizer("rsgdm-topk", 0.1, topk_fraction=0.05)
  params, state = _run(tx)
  ref_params, ref_state = _run(reference)
  assert jax.tree.structure(state) == jax.tree.structure(ref_state)
  jax.tree.map(
    np.testing.assert_array_equal,
    rsgd.eval_params(state, params),
    rsgd.eval_params(ref_state, ref_params),
  )
