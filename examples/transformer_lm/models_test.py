"""The transformer against a NumPy forward pass written from the equations, and its properties."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from examples.transformer_lm import models

VOCAB, CONTEXT = 23, 12


def _model(positions="learned", dropout=0.0, layers=2):
  config = models.TransformerConfig(
    vocab_size=VOCAB,
    context=CONTEXT,
    layers=layers,
    width=16,
    heads=2,
    mlp_ratio=2,
    dropout=dropout,
    positions=positions,
  )
  return models.TransformerLM(config, rngs=nnx.Rngs(0))


def _layer_norm(x, scale, bias):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * scale + bias


def _gelu(x):  # the tanh approximation, jax.nn.gelu's default
  return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _rotate(x, offset=0):
  """(time, heads, dim): pair (2i, 2i+1) at time t turned by angle t * 10000^(-2i/dim)."""
  time, _, dim = x.shape
  out = np.empty_like(x)
  for t in range(time):
    for i in range(dim // 2):
      angle = (t + offset) * 10000.0 ** (-2 * i / dim)
      a, b = x[t, :, 2 * i], x[t, :, 2 * i + 1]
      out[t, :, 2 * i] = a * math.cos(angle) - b * math.sin(angle)
      out[t, :, 2 * i + 1] = a * math.sin(angle) + b * math.cos(angle)
  return out


def reference_logits(model, tokens):
  """One sequence's logits, in float64 NumPy, from the model's parameters."""
  c = model.config
  p = jax.tree.map(
    lambda v: np.asarray(v, np.float64), nnx.to_pure_dict(nnx.state(model, nnx.Param))
  )
  time = len(tokens)
  x = p["embed"]["embedding"][tokens]
  if c.positions == "learned":
    x = x + p["position"][:time]
  for block in p["blocks"].values():
    h = _layer_norm(x, block["ln_attn"]["scale"], block["ln_attn"]["bias"])
    qkv = h @ block["attn"]["qkv"]["kernel"] + block["attn"]["qkv"]["bias"]
    q, k, v = np.split(qkv.reshape(time, 3 * c.heads, c.head_dim), 3, axis=1)
    if c.positions == "rotary":
      q, k = _rotate(q), _rotate(k)
    heads = []
    for head in range(c.heads):
      scores = q[:, head] @ k[:, head].T / math.sqrt(c.head_dim)
      scores[np.triu_indices(time, 1)] = -np.inf  # position t sees positions <= t
      weights = np.exp(scores - scores.max(-1, keepdims=True))
      weights /= weights.sum(-1, keepdims=True)
      heads.append(weights @ v[:, head])
    attended = np.stack(heads, axis=1).reshape(time, c.width)
    x = x + attended @ block["attn"]["out"]["kernel"] + block["attn"]["out"]["bias"]
    h = _layer_norm(x, block["ln_mlp"]["scale"], block["ln_mlp"]["bias"])
    h = _gelu(h @ block["mlp_in"]["kernel"] + block["mlp_in"]["bias"])
    x = x + h @ block["mlp_out"]["kernel"] + block["mlp_out"]["bias"]
  x = _layer_norm(x, p["ln_final"]["scale"], p["ln_final"]["bias"])
  return x @ p["embed"]["embedding"].T  # tied: the output layer is the embedding


@pytest.mark.parametrize("positions", models.POSITIONS)
def test_forward_matches_the_numpy_reference(positions):
  model = _model(positions)
  tokens = np.random.default_rng(1).integers(0, VOCAB, size=(2, CONTEXT))
  logits = np.asarray(model(jnp.asarray(tokens)))
  for row in range(2):
    np.testing.assert_allclose(logits[row], reference_logits(model, tokens[row]), atol=2e-5)


def test_a_position_sees_no_later_token():
  model = _model("rotary")
  tokens = np.random.default_rng(2).integers(0, VOCAB, size=(1, CONTEXT))
  changed = tokens.copy()
  changed[0, 7:] = (changed[0, 7:] + 1) % VOCAB
  a, b = np.asarray(model(jnp.asarray(tokens))), np.asarray(model(jnp.asarray(changed)))
  np.testing.assert_array_equal(a[0, :7], b[0, :7])
  assert not np.allclose(a[0, 7:], b[0, 7:])


def test_the_output_layer_is_the_embedding():
  model = _model()
  names = {"/".join(map(str, path)) for path, _ in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert not any("head" in n or "unembed" in n for n in names)  # no second vocab-sized matrix
  count = sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert count < 2 * VOCAB * 16 + 12_000  # the vocabulary's matrix counted once


def test_rotary_scores_depend_only_on_the_distance():
  rng = np.random.default_rng(3)
  q, k = rng.normal(size=(1, 1, 1, 8)), rng.normal(size=(1, 1, 1, 8))

  def score(t, s):
    qt = models.rotary(jnp.asarray(np.repeat(q, t + 1, axis=1), jnp.float32))[0, t, 0]
    ks = models.rotary(jnp.asarray(np.repeat(k, s + 1, axis=1), jnp.float32))[0, s, 0]
    return float(qt @ ks)

  assert score(5, 2) == pytest.approx(score(9, 6), abs=1e-5)
  assert score(5, 2) != pytest.approx(score(5, 4), abs=1e-3)


def test_dropout_acts_with_a_key_only():
  model = _model(dropout=0.3)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, VOCAB, size=(2, CONTEXT)))
  evaluation = np.asarray(model(tokens))
  np.testing.assert_array_equal(evaluation, np.asarray(model(tokens)))
  np.testing.assert_allclose(
    evaluation[0], reference_logits(model, np.asarray(tokens[0])), atol=2e-5
  )
  a, b = model(tokens, jax.random.key(0)), model(tokens, jax.random.key(1))
  assert not np.allclose(a, evaluation) and not np.allclose(a, b)
  np.testing.assert_array_equal(a, model(tokens, jax.random.key(0)))  # a pure function of the key


@pytest.mark.parametrize(
  "changes,message",
  [
    ({"width": 18}, "even size"),
    ({"heads": 0}, "positive integer"),
    ({"dropout": 1.0}, r"\[0, 1\)"),
    ({"positions": "alibi"}, "learned"),
  ],
)
def test_bad_settings_are_refused_with_the_field_named(changes, message):
  settings = {"vocab_size": VOCAB, "width": 16, "heads": 2, **changes}
  with pytest.raises(ValueError, match=message):
    models.TransformerConfig(**settings)


def test_a_sequence_longer_than_the_context_is_refused():
  with pytest.raises(ValueError, match="context of 12"):
    _model()(jnp.zeros((1, CONTEXT + 1), jnp.int32))
