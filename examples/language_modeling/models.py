"""AWD-LSTM (Merity et al., 2018) in Flax NNX: a multi-layer LSTM language model regularized by
DropConnect on the hidden-to-hidden weights, locked (variational) dropout, embedding dropout and tied
input/output embeddings, as in the public ``salesforce/awd-lstm-lm`` code.

Tensors are time-major, ``(time, batch, ...)``, as in that code. Every dropout mask is drawn from an
explicit key per call, so a training step is a pure function of (params, state, batch, key).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

Carry = tuple[jax.Array, jax.Array]  # (h, c), each (batch, hidden)


@dataclasses.dataclass(frozen=True)
class Dropouts:
  """Dropout rates, named as the AWD-LSTM command-line flags."""

  dropout: float = 0.4  # locked dropout on the last layer's output
  dropouth: float = 0.25  # locked dropout between LSTM layers
  dropouti: float = 0.4  # locked dropout on the embedded input
  dropoute: float = 0.1  # dropping whole words from the embedding matrix
  wdrop: float = 0.5  # DropConnect on each hidden-to-hidden matrix


def locked_dropout(key: jax.Array, x: jax.Array, rate: float) -> jax.Array:
  """Variational dropout: one mask per sequence, shared by all time steps of ``x (T, B, F)``."""
  if rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, (1, *x.shape[1:]))
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def _uniform(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


class WeightDropLSTM(nnx.Module):
  """One LSTM layer (PyTorch's gate order i, f, g, o and initialization) whose hidden-to-hidden
  matrix is dropped out with DropConnect, one mask per call (per BPTT window) as in ``WeightDrop``.
  """

  def __init__(self, in_features: int, hidden: int, *, wdrop: float, rngs: nnx.Rngs):
    bound = 1.0 / hidden**0.5
    self.hidden = hidden
    self.wdrop = wdrop
    self.w_ih = nnx.Param(_uniform(rngs.params(), (in_features, 4 * hidden), bound))
    self.w_hh = nnx.Param(_uniform(rngs.params(), (hidden, 4 * hidden), bound))
    self.b_ih = nnx.Param(_uniform(rngs.params(), (4 * hidden,), bound))
    self.b_hh = nnx.Param(_uniform(rngs.params(), (4 * hidden,), bound))

  def __call__(
    self, inputs: jax.Array, carry: Carry, mask: jax.Array, key: jax.Array | None
  ) -> tuple[jax.Array, Carry]:
    """Runs ``inputs (T, B, F)``; rows where ``mask (T, B)`` is 0 (padding) leave the carry alone."""
    w_hh = self.w_hh[...]
    if key is not None and self.wdrop > 0.0:
      keep = jax.random.bernoulli(key, 1.0 - self.wdrop, w_hh.shape)
      w_hh = jnp.where(keep, w_hh / (1.0 - self.wdrop), 0.0)
    # The input projection of all time steps at once; only h @ w_hh stays in the recurrence.
    projected = inputs @ self.w_ih[...] + (self.b_ih[...] + self.b_hh[...])

    def step(carry: Carry, xs: tuple[jax.Array, jax.Array]) -> tuple[Carry, jax.Array]:
      x, valid = xs
      h, c = carry
      i, f, g, o = jnp.split(x + h @ w_hh, 4, axis=-1)
      new_c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
      new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
      valid = valid[:, None] > 0
      return (jnp.where(valid, new_h, h), jnp.where(valid, new_c, c)), new_h

    carry, outputs = jax.lax.scan(step, carry, (projected, mask))
    return outputs, carry


@dataclasses.dataclass(frozen=True)
class Outputs:
  """What the loss needs: logits, and the last layer's output before and after its dropout."""

  logits: jax.Array
  last_hidden: jax.Array
  last_dropped: jax.Array
  carries: list[Carry]


class AWDLSTM(nnx.Module):
  """Embedding, ``num_layers`` weight-dropped LSTMs and a decoder tied to the embedding.

  The last layer's width is ``embed_dim`` so that the decoder can reuse the embedding matrix.
  """

  def __init__(
    self,
    vocab_size: int,
    *,
    embed_dim: int = 400,
    hidden: int = 1150,
    num_layers: int = 3,
    dropouts: Dropouts = Dropouts(),
    rngs: nnx.Rngs,
  ):
    if num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
    self.dropouts = dropouts
    # AWD-LSTM's init_weights: embedding uniform(-0.1, 0.1), decoder bias 0.
    self.embedding = nnx.Param(_uniform(rngs.params(), (vocab_size, embed_dim), 0.1))
    self.decoder_bias = nnx.Param(jnp.zeros((vocab_size,), jnp.float32))
    widths = [embed_dim] + [hidden] * (num_layers - 1) + [embed_dim]
    self.layers = nnx.List(
      [
        WeightDropLSTM(widths[i], widths[i + 1], wdrop=dropouts.wdrop, rngs=rngs)
        for i in range(num_layers)
      ]
    )

  def initial_carry(self, batch_size: int) -> list[Carry]:
    return [
      (jnp.zeros((batch_size, layer.hidden)), jnp.zeros((batch_size, layer.hidden)))
      for layer in self.layers
    ]

  def __call__(
    self,
    tokens: jax.Array,
    carries: list[Carry],
    mask: jax.Array,
    key: jax.Array | None = None,
  ) -> Outputs:
    """``tokens (T, B)`` -> logits ``(T, B, vocab)``; ``key=None`` evaluates (no dropout)."""
    d = self.dropouts
    training = key is not None
    keys = list(jax.random.split(key, 3 + 2 * len(self.layers))) if training else []
    embedding = self.embedding[...]
    if training and d.dropoute > 0.0:
      keep = jax.random.bernoulli(keys.pop(), 1.0 - d.dropoute, (embedding.shape[0], 1))
      embedding = jnp.where(keep, embedding / (1.0 - d.dropoute), 0.0)
    x = embedding[tokens]
    if training:
      x = locked_dropout(keys.pop(), x, d.dropouti)
    new_carries = []
    for index, (layer, carry) in enumerate(zip(self.layers, carries, strict=True)):
      x, carry = layer(x, carry, mask, keys.pop() if training else None)
      new_carries.append(carry)
      if training and index < len(self.layers) - 1:
        x = locked_dropout(keys.pop(), x, d.dropouth)
    last_hidden = x
    dropped = locked_dropout(keys.pop(), x, d.dropout) if training else x
    logits = dropped @ self.embedding[...].T + self.decoder_bias[...]
    return Outputs(logits, last_hidden, dropped, new_carries)
