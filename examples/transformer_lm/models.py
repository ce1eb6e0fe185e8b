"""A decoder-only transformer language model in Flax NNX (GPT-2's layout, pre-norm).

Each block is ``x + attn(ln(x))`` then ``x + mlp(ln(x))``; attention is causal, multi-head, with
learned absolute positions (GPT-2) or rotary ones (RoFormer, Su et al. 2021); the output projection
is the token embedding itself (``embed.attend``, tied weights). Initialisation follows GPT-2:
normal(0.02) for every matrix, with the two residual-branch output projections scaled by
``1 / sqrt(2 * layers)`` so the residual stream's variance does not grow with depth.

Tensors are batch-major, ``(batch, time, ...)``. Dropout masks are drawn from an explicit key per
call, as in the AWD-LSTM family's model, so a training step is a pure function of (params, batch,
key); ``key=None`` is evaluation (no dropout).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

POSITIONS = ("learned", "rotary")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """The model's shape. ``width`` must split into ``heads`` heads of even size (rotary pairs)."""

  vocab_size: int
  context: int = 64
  layers: int = 2
  width: int = 128
  heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.1
  positions: str = "learned"

  def __post_init__(self) -> None:
    for name in ("vocab_size", "context", "layers", "width", "heads", "mlp_ratio"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"config.{name} must be a positive integer, got {value!r}.")
    if self.width % self.heads or (self.width // self.heads) % 2:
      raise ValueError(
        f"config.width={self.width} must split into config.heads={self.heads} heads of even size "
        "(rotary positions rotate pairs of features): choose width a multiple of 2 * heads."
      )
    if not (isinstance(self.dropout, float | int) and 0.0 <= self.dropout < 1.0):
      raise ValueError(f"config.dropout must be in [0, 1), got {self.dropout!r}.")
    if self.positions not in POSITIONS:
      raise ValueError(f"config.positions must be one of {POSITIONS}, got {self.positions!r}.")

  @property
  def head_dim(self) -> int:
    return self.width // self.heads


def dropout(key: jax.Array | None, x: jax.Array, rate: float) -> jax.Array:
  """Inverted dropout with an explicit key; the identity for ``key=None`` or ``rate == 0``."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def rotary(x: jax.Array, offset: int = 0) -> jax.Array:
  """Rotates feature pairs ``(x[2i], x[2i + 1])`` of ``x (batch, time, heads, dim)`` by ``t * f_i``.

  ``f_i = 10000^(-2i / dim)``: the dot product of a rotated query at ``t`` and key at ``s`` then
  depends on ``t - s`` only (RoFormer's relative-position property, which the tests check).
  """
  dim = x.shape[-1]
  freqs = 10000.0 ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
  angles = (jnp.arange(x.shape[1], dtype=jnp.float32) + offset)[:, None] * freqs  # (time, dim/2)
  cos, sin = jnp.cos(angles)[None, :, None, :], jnp.sin(angles)[None, :, None, :]
  even, odd = x[..., 0::2].astype(jnp.float32), x[..., 1::2].astype(jnp.float32)
  rotated = jnp.stack([even * cos - odd * sin, even * sin + odd * cos], axis=-1)
  return rotated.reshape(x.shape).astype(x.dtype)


def _dense(features_in: int, features_out: int, std: float, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(features_in, features_out, kernel_init=nnx.initializers.normal(std), rngs=rngs)


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention; one fused query-key-value projection."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    residual_std = 0.02 / math.sqrt(2 * config.layers)
    self.qkv = _dense(config.width, 3 * config.width, 0.02, rngs)
    self.out = _dense(config.width, config.width, residual_std, rngs)

  def __call__(self, x: jax.Array, keys: tuple[jax.Array, jax.Array] | None) -> jax.Array:
    batch, time, _ = x.shape
    c = self.config
    q, k, v = jnp.split(self.qkv(x).reshape(batch, time, 3 * c.heads, c.head_dim), 3, axis=2)
    if c.positions == "rotary":
      q, k = rotary(q), rotary(k)
    if keys is None or c.dropout == 0.0:
      # XLA's fused attention where the platform has one; the same math as below.
      y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
    else:
      # Attention dropout needs the weights themselves.
      logits = jnp.einsum("bthd,bshd->bhts", q, k) / math.sqrt(c.head_dim)
      causal = jnp.tril(jnp.ones((time, time), bool))
      logits = jnp.where(causal, logits, jnp.finfo(logits.dtype).min)
      weights = dropout(keys[0], jax.nn.softmax(logits, axis=-1), c.dropout)
      y = jnp.einsum("bhts,bshd->bthd", weights, v)
    y = self.out(y.reshape(batch, time, c.width))
    return dropout(None if keys is None else keys[1], y, c.dropout)


class Block(nnx.Module):
  """``x + attn(ln(x))``, then ``x + mlp(ln(x))`` (pre-norm, GELU)."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    hidden = config.mlp_ratio * config.width
    self.ln_attn = nnx.LayerNorm(config.width, rngs=rngs)
    self.attn = CausalSelfAttention(config, rngs=rngs)
    self.ln_mlp = nnx.LayerNorm(config.width, rngs=rngs)
    self.mlp_in = _dense(config.width, hidden, 0.02, rngs)
    self.mlp_out = _dense(hidden, config.width, 0.02 / math.sqrt(2 * config.layers), rngs)

  def __call__(self, x: jax.Array, key: jax.Array | None) -> jax.Array:
    keys = None if key is None else jax.random.split(key, 3)
    x = x + self.attn(self.ln_attn(x), None if keys is None else (keys[0], keys[1]))
    h = self.mlp_out(jax.nn.gelu(self.mlp_in(self.ln_mlp(x))))
    return x + dropout(None if keys is None else keys[2], h, self.config.dropout)


class TransformerLM(nnx.Module):
  """Token ids ``(batch, time)`` to next-token logits ``(batch, time, vocab)``."""

  def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.embed = nnx.Embed(
      config.vocab_size, config.width, embedding_init=nnx.initializers.normal(0.02), rngs=rngs
    )
    if config.positions == "learned":
      self.position = nnx.Param(
        nnx.initializers.normal(0.01)(rngs.params(), (config.context, config.width))
      )
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.layers)])
    self.ln_final = nnx.LayerNorm(config.width, rngs=rngs)

  def __call__(self, tokens: jax.Array, key: jax.Array | None = None) -> jax.Array:
    """Logits for each position; ``key`` draws the dropout masks (``None``: evaluation)."""
    time = tokens.shape[1]
    if time > self.config.context:
      raise ValueError(f"{time} tokens exceed the model's context of {self.config.context}.")
    keys = None if key is None else jax.random.split(key, len(self.blocks) + 1)
    x = self.embed(tokens)
    if self.config.positions == "learned":
      x = x + self.position[:time]
    x = dropout(None if keys is None else keys[0], x, self.config.dropout)
    for i, block in enumerate(self.blocks):
      x = block(x, None if keys is None else keys[i + 1])
    return self.embed.attend(self.ln_final(x))
