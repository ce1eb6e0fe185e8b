"""The Cluster-GCN model in Flax NNX: a stack of graph convolutions with layer normalization.

It follows the public Cluster-GCN code (``models.GCN`` with ``layernorm`` and ``precalc``): each
layer maps ``[\\hat A h, h]`` (the aggregated and the node's own features, concatenated) through a
bias-free Glorot-initialized linear map, then layer normalization and ReLU on the hidden layers;
dropout acts on each layer's input. With ``precalc`` the first layer's ``[\\hat A X, X]`` is
computed once on the whole graph (:func:`examples.graph.batching.precompute_first_layer`), so the
first layer is a plain linear map of it.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from examples.graph.batching import GraphBatch, propagate


class GraphConv(nnx.Module):
  """One layer: ``act(norm(dropout([\\hat A h, h]) W))`` (without ``\\hat A h`` if not aggregating).

  Args:
    in_features: width of ``h``.
    out_features: output width.
    aggregate: concatenate ``\\hat A h`` to ``h`` (False for a precalculated first layer).
    layer_norm: normalize the output (hidden layers).
    activation: apply ReLU (hidden layers).
    dropout: dropout rate on the layer's input.
    rngs: parameter and dropout randomness.
  """

  def __init__(
    self,
    in_features: int,
    out_features: int,
    *,
    aggregate: bool,
    layer_norm: bool,
    activation: bool,
    dropout: float,
    rngs: nnx.Rngs,
  ):
    self.aggregate = aggregate
    self.activation = activation
    self.dropout = nnx.Dropout(dropout, rngs=rngs)
    self.linear = nnx.Linear(
      in_features * (2 if aggregate else 1),
      out_features,
      use_bias=False,
      kernel_init=nnx.initializers.glorot_uniform(),
      rngs=rngs,
    )
    self.norm = nnx.LayerNorm(out_features, rngs=rngs) if layer_norm else None

  def __call__(self, h: jax.Array, batch: GraphBatch) -> jax.Array:
    if self.aggregate:
      h = jnp.concatenate([propagate(h, batch), h], axis=-1)
    h = self.linear(self.dropout(h))
    if self.norm is not None:
      h = self.norm(h)
    return nnx.relu(h) if self.activation else h


class ClusterGCN(nnx.Module):
  """``num_layers`` graph convolutions from node features to per-node class logits.

  Args:
    in_features: input feature width (``2F`` when ``precalc``: the ``[\\hat A X, X]`` input).
    hidden: hidden width (the paper: 2048).
    num_classes: output width (PPI: 121 labels).
    num_layers: number of graph convolutions (the paper: 5).
    precalc: the first layer's aggregation is precomputed (its input is already ``[\\hat A X, X]``).
    layer_norm: layer normalization on hidden layers.
    dropout: dropout rate on every layer's input.
    rngs: parameter and dropout randomness.
  """

  def __init__(
    self,
    in_features: int,
    hidden: int,
    num_classes: int,
    *,
    num_layers: int,
    precalc: bool = True,
    layer_norm: bool = True,
    dropout: float = 0.0,
    rngs: nnx.Rngs,
  ):
    if num_layers < 1:
      raise ValueError(f"num_layers must be >= 1, got {num_layers}.")
    widths = [in_features] + [hidden] * (num_layers - 1) + [num_classes]
    layers = []
    for index in range(num_layers):
      last = index == num_layers - 1
      layers.append(
        GraphConv(
          widths[index],
          widths[index + 1],
          aggregate=not (index == 0 and precalc),
          layer_norm=layer_norm and not last,
          activation=not last,
          dropout=dropout,
          rngs=rngs,
        )
      )
    self.layers = nnx.List(layers)

  def __call__(self, batch: GraphBatch) -> jax.Array:
    h = batch.features
    for layer in self.layers:
      h = layer(h, batch)
    return h
