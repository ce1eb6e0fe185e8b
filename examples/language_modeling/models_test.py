"""AWD-LSTM pieces against NumPy: the LSTM recurrence, padding masks, dropouts, tied weights."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from examples.language_modeling import models

NO_DROPOUT = models.Dropouts(dropout=0.0, dropouth=0.0, dropouti=0.0, dropoute=0.0, wdrop=0.0)


def np_lstm(inputs, h, c, w_ih, w_hh, b):
  """PyTorch's LSTM equations (gates i, f, g, o), one step at a time."""
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  outputs = []
  for x in inputs:
    i, f, g, o = np.split(x @ w_ih + h @ w_hh + b, 4, axis=-1)
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    outputs.append(h)
  return np.stack(outputs), h, c


def test_lstm_layer_matches_the_numpy_recurrence():
  layer = models.WeightDropLSTM(5, 7, wdrop=0.5, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(0)
  inputs = rng.normal(size=(6, 3, 5)).astype(np.float32)
  h0, c0 = (rng.normal(size=(3, 7)).astype(np.float32) for _ in range(2))
  # Full float32 matmuls: GPUs default to TF32, about 1e-3 relative, for float32 products.
  with jax.default_matmul_precision("highest"):
    outputs, (h, c) = layer(jnp.asarray(inputs), (h0, c0), jnp.ones((6, 3)), None)
  w_ih, w_hh = np.asarray(layer.w_ih[...]), np.asarray(layer.w_hh[...])
  b = np.asarray(layer.b_ih[...]) + np.asarray(layer.b_hh[...])
  ref_out, ref_h, ref_c = np_lstm(inputs, h0, c0, w_ih, w_hh, b)
  np.testing.assert_allclose(outputs, ref_out, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(h, ref_h, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(c, ref_c, rtol=1e-5, atol=1e-6)
  # Initialization as PyTorch's: uniform(-1/sqrt(hidden), 1/sqrt(hidden)).
  assert np.abs(w_hh).max() <= 1 / np.sqrt(7)


def test_padded_rows_leave_the_carry_alone():
  layer = models.WeightDropLSTM(4, 6, wdrop=0.0, rngs=nnx.Rngs(1))
  inputs = jax.random.normal(jax.random.key(0), (8, 2, 4))
  zeros = (jnp.zeros((2, 6)), jnp.zeros((2, 6)))
  mask = jnp.zeros((8, 2)).at[:5].set(1.0)
  padded_out, padded_carry = layer(inputs.at[5:].set(9.0), zeros, mask, None)
  short_out, short_carry = layer(inputs[:5], zeros, jnp.ones((5, 2)), None)
  np.testing.assert_allclose(padded_out[:5], short_out, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), padded_carry, short_carry)


def test_weight_drop_masks_the_hidden_matrix_once_per_call():
  layer = models.WeightDropLSTM(3, 4, wdrop=0.5, rngs=nnx.Rngs(2))
  inputs = jax.random.normal(jax.random.key(1), (5, 2, 3))
  zeros = (jnp.zeros((2, 4)), jnp.zeros((2, 4)))
  ones = jnp.ones((5, 2))
  dropped, _ = layer(inputs, zeros, ones, jax.random.key(3))
  clean, _ = layer(inputs, zeros, ones, None)
  # The first step sees h = 0, so w_hh (the only dropped weight) cannot matter there yet.
  np.testing.assert_allclose(dropped[0], clean[0], rtol=1e-6)
  assert not np.allclose(dropped[1:], clean[1:])


def test_locked_dropout_shares_its_mask_over_time():
  x = jnp.ones((10, 4, 6))
  out = models.locked_dropout(jax.random.key(0), x, 0.5)
  kept = np.asarray(out) != 0
  assert (kept == kept[0]).all()  # the same units are dropped at every time step
  np.testing.assert_allclose(np.asarray(out)[kept], 2.0)  # kept units are scaled by 1 / (1 - p)
  assert 0 < kept.mean() < 1


def test_randomness_comes_only_from_the_dropouts_and_weights_are_tied():
  tokens = jnp.array([[1, 2], [3, 4], [5, 6]])
  model = models.AWDLSTM(
    11, embed_dim=4, hidden=5, num_layers=3, dropouts=NO_DROPOUT, rngs=nnx.Rngs(0)
  )
  carries = model.initial_carry(2)
  mask = jnp.ones((3, 2))
  evaluated = model(tokens, carries, mask).logits
  np.testing.assert_allclose(
    model(tokens, carries, mask, jax.random.key(5)).logits, evaluated, rtol=1e-6
  )
  assert evaluated.shape == (3, 2, 11)
  assert [c[0].shape[-1] for c in carries] == [5, 5, 4]  # the last layer is embedding-wide
  params = nnx.state(model, nnx.Param)
  assert "decoder" not in params and "decoder_bias" in params  # no separate output matrix
  # Token 10 is never an input, so its embedding row reaches the logits only as the decoder.
  model.embedding[...] = model.embedding[...].at[10].add(1.0)
  changed = model(tokens, carries, mask).logits
  np.testing.assert_allclose(changed[..., :10], evaluated[..., :10], rtol=1e-6)
  assert not np.allclose(changed[..., 10], evaluated[..., 10])

  regularized = models.AWDLSTM(11, embed_dim=4, hidden=5, num_layers=3, rngs=nnx.Rngs(0))
  a = regularized(tokens, carries, mask, jax.random.key(1)).logits
  b = regularized(tokens, carries, mask, jax.random.key(2)).logits
  assert not np.allclose(a, b)
  np.testing.assert_allclose(
    regularized(tokens, carries, mask).logits, regularized(tokens, carries, mask).logits
  )
