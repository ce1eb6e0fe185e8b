"""Properties of the residual schemes, and of one residual step, over random shapes and values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rsgd_optax as rsgd

SETTINGS = settings(max_examples=25, deadline=None)

shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=7)
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_subnormal=False, width=32)
nonzero = finite.filter(lambda v: abs(v) > 1e-3)


def arrays(elements=finite):
  return shapes.flatmap(lambda s: hnp.arrays(np.float32, s, elements=elements))


fractions = st.floats(0.01, 1.0)


@SETTINGS
@given(x=arrays(), fraction=fractions)
def test_top_k_keeps_exactly_k_entries_the_largest_in_magnitude(x, fraction):
  out = np.asarray(rsgd.top_k(fraction)({"v": jnp.asarray(x)})["v"])
  k = reference.top_k_count(fraction, x.size)
  assert np.count_nonzero(out) <= k  # zero entries may be among the kept ones
  # The kept set is the first k of a stable sort by decreasing magnitude (ties -> lower index).
  np.testing.assert_array_equal(out, reference.keep_top(x, k))


@SETTINGS
@given(x=arrays(nonzero), per_leaf=st.booleans())
def test_scaled_sign_of_a_vector_without_zeros_keeps_its_l1_norm(x, per_leaf):
  out = np.asarray(rsgd.scaled_sign(per_leaf)({"v": jnp.asarray(x)})["v"], np.float64)
  np.testing.assert_allclose(np.abs(out).sum(), np.abs(x.astype(np.float64)).sum(), rtol=1e-5)
  np.testing.assert_array_equal(np.sign(out), np.sign(x))
  assert np.unique(np.abs(out)).size == 1  # one magnitude for the whole leaf


@SETTINGS
@given(
  x=arrays(),
  alpha=st.floats(0.01, 1.0),
  a=st.floats(-10, 10, width=32),
  b=st.floats(-10, 10, width=32),
)
def test_scaling_is_linear(x, alpha, a, b):
  scheme = rsgd.scaling(alpha)
  y = np.flip(x).copy()
  combo = scheme({"v": jnp.asarray(a * x + b * y, jnp.float32)})["v"]
  separate = a * np.asarray(scheme({"v": jnp.asarray(x)})["v"]) + b * np.asarray(
    scheme({"v": jnp.asarray(y)})["v"]
  )
  np.testing.assert_allclose(combo, separate, rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(scheme({"v": jnp.asarray(x)})["v"], alpha * x, rtol=1e-6, atol=1e-30)


def _step_parts(make_tx, np_scheme, r, u):
  """Runs one update from residual r with base update u.

  Returns the reference's ``p = R(r - u)`` (float64), the library's new residual and ``r - u``.
  """
  tx = make_tx()
  state = tx.init({"v": jnp.zeros_like(r)})
  state = state._replace(residual={"v": jnp.asarray(r)})
  out, new_state = tx.update({"v": jnp.asarray(u)}, state)
  np.testing.assert_array_equal(out["v"], u)  # the base update passes through unchanged
  delta = r - u  # float32, as the library forms it
  (p,) = np_scheme([delta])
  return p, np.asarray(new_state.residual["v"], np.float64), delta.astype(np.float64)


residual_and_update = shapes.flatmap(
  lambda s: st.tuples(
    hnp.arrays(np.float32, s, elements=finite), hnp.arrays(np.float32, s, elements=finite)
  )
)


@SETTINGS
@given(ru=residual_and_update, fraction=fractions)
def test_top_k_step_splits_the_difference_exactly(ru, fraction):
  r, u = ru
  p, r_new, delta = _step_parts(
    lambda: rsgd.residual_topk(fraction), reference.top_k(fraction), r, u
  )
  np.testing.assert_array_equal(r_new, delta - p)  # exact: r_new is delta off the kept set


@SETTINGS
@given(ru=residual_and_update, alpha=st.floats(0.01, 1.0), use_sign=st.booleans())
def test_scale_and_sign_steps_split_the_difference(ru, alpha, use_sign):
  r, u = ru
  if use_sign:
    p, r_new, delta = _step_parts(rsgd.residual_sign, reference.scaled_sign(), r, u)
  else:
    p, r_new, delta = _step_parts(
      lambda: rsgd.residual_scale(alpha), reference.scaling(alpha), r, u
    )
  scale = np.abs(delta).max() + np.abs(p).max() + 1.0
  # r_new = fl32(delta - fl32(p)): half an ulp for the subtraction, and the float32 mean |delta|
  # of the sign's scale carries a few ulps of its own (4.3 eps * scale seen on a 263-sized value).
  np.testing.assert_allclose(p + r_new, delta, rtol=0, atol=8 * np.finfo(np.float32).eps * scale)


def test_global_schemes_pool_all_leaves():
  tree = {"a": jnp.array([1.0, -1.0]), "b": jnp.array([4.0, 0.0, -2.0, 10.0])}
  sign = rsgd.scaled_sign(per_leaf=False)(tree)
  np.testing.assert_allclose(sign["a"], [3.0, -3.0])  # mean |v| over all six entries is 3
  topk = rsgd.top_k(fraction=1 / 3, per_leaf=False)(tree)  # k = 2 over six entries
  np.testing.assert_array_equal(topk["a"], [0.0, 0.0])
  np.testing.assert_array_equal(topk["b"], [4.0, 0.0, 0.0, 10.0])


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16, jnp.float32])
@pytest.mark.parametrize(
  "scheme", [rsgd.scaling(0.5), rsgd.scaled_sign(), rsgd.top_k(0.5)], ids=["scale", "sign", "topk"]
)
def test_schemes_keep_the_dtype(scheme, dtype):
  v = {"v": jnp.linspace(-2, 3, 8, dtype=dtype)}
  assert scheme(v)["v"].dtype == dtype


def test_schemes_work_under_jit_with_a_traced_step():
  schedule = optax.linear_schedule(0.5, 0.25, 10)
  scheme = rsgd.scaling(schedule)
  out = jax.jit(lambda v, step: scheme(v, step))({"v": jnp.ones(3)}, jnp.int32(10))
  np.testing.assert_allclose(out["v"], 0.25)


@pytest.mark.parametrize("per_leaf", ["yes", 1, None])
def test_per_leaf_must_be_a_bool(per_leaf):
  with pytest.raises(ValueError, match="per_leaf"):
    rsgd.scaled_sign(per_leaf)
  with pytest.raises(ValueError, match="per_leaf"):
    rsgd.top_k(0.1, per_leaf)
