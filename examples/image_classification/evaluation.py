"""Evaluating the views of one training: each at its own point, on the test and training sets.

The base view is evaluated at ``params`` (the trajectory ``y``); a residual view at
``rsgd.eval_params(opt_state, params, which=...)`` (its ``x = y + r``), with ``reference_*`` at
``params``; optionally with batch-norm statistics re-estimated at that point. Shared by the plain
trainer (:mod:`examples.image_classification.train`) and the compressed one
(:mod:`examples.image_classification.compressed_train`): only their train steps differ.
"""

import dataclasses
import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import rsgd_optax as rsgd
from examples.common import optimizers, sharding, watchdog
from examples.image_classification import input_pipeline


@dataclasses.dataclass(frozen=True)
class EvalSteps:
  """The jitted functions of the evaluation (built once, reused every epoch).

  Everything computed on the (possibly sharded) state is jitted: an eager op on arrays of several
  processes is a collective of its own, and those hung multi-process runs.
  """

  evaluate: Any
  batch_moments: Any
  mean_moments: Any
  view_point: Any
  proximity: Any


def step_functions(
  graphdef: nnx.GraphDef, mean: np.ndarray, std: np.ndarray, mesh: Mesh
) -> dict[str, Any]:
  """The jitted evaluation functions, by the :class:`EvalSteps` field each fills.

  Each is compiled ahead of its first run, with the stall watchdog paused: its bound then covers
  only the running steps, which is what waits on the other processes (examples/common/watchdog.py).
  """
  replicated = NamedSharding(mesh, P())

  def eval_step(totals, params, batch_stats, images, labels, mask):
    """``totals`` plus this batch's loss sum, correct count and example count."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    logits = model(input_pipeline.standardize(images, mean, std), train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return totals + jnp.stack([jnp.sum(losses * mask), jnp.sum(correct * mask), jnp.sum(mask)])

  def batch_moments(params, batch_stats, images):
    """Each batch-norm layer's exact batch mean and variance at ``params`` (momentum 0)."""
    model = nnx.merge(graphdef, params, batch_stats, copy=True)
    for _, module in nnx.iter_modules(model):
      if isinstance(module, nnx.BatchNorm):
        module.momentum = 0.0
    model(input_pipeline.standardize(images, mean, std), train=True)
    return nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))

  ahead = watchdog.CompiledAhead
  return {
    "evaluate": ahead(jax.jit(eval_step, out_shardings=replicated)),
    "batch_moments": ahead(jax.jit(batch_moments, out_shardings=replicated)),
    "mean_moments": ahead(
      jax.jit(
        lambda moments: jax.tree.map(lambda *m: sum(m) / len(m), *moments),
        out_shardings=replicated,
      )
    ),
    "view_point": ahead(jax.jit(rsgd.eval_params, static_argnames="which")),
    "proximity": ahead(jax.jit(rsgd.proximity, static_argnames="which", out_shardings=replicated)),
  }


def evaluate(
  steps: EvalSteps,
  params,
  batch_stats,
  batches: Iterator,
  batch_sharding: NamedSharding,
  beat: Callable[[], None] = lambda: None,
) -> tuple[float, float]:
  """Mean loss and accuracy over ``batches`` (padding masked out)."""
  total = np.zeros(3, np.float32)
  for images, labels, mask in batches:
    total = steps.evaluate(
      total,
      params,
      batch_stats,
      *sharding.put_local(batch_sharding, images, labels, mask.astype(np.float32)),
    )
    beat()
  loss_sum, correct, count = np.asarray(jax.device_get(total), np.float64)
  return float(loss_sum / count), float(correct / count)


def recompute_batch_stats(
  steps: EvalSteps,
  params,
  batch_stats,
  batches: Iterator,
  batch_sharding: NamedSharding,
  max_batches: int,
):
  """Batch-norm statistics re-estimated at ``params``: the mean of per-batch moments."""
  moments = []
  for images, _, mask in batches:
    if len(moments) == max_batches:
      break
    if not mask.all():  # padded batches would bias the statistics
      continue
    moments.append(
      steps.batch_moments(params, batch_stats, *sharding.put_local(batch_sharding, images))
    )
  if not moments:
    return batch_stats
  return steps.mean_moments(moments)


def evaluate_views(
  config: ml_collections.ConfigDict,
  steps: EvalSteps,
  state: dict[str, Any],
  data: input_pipeline.Input,
  batch_sharding: NamedSharding,
  view_list: list[optimizers.View],
  beat: Callable[[], None] = lambda: None,
) -> dict[str, tuple[dict[str, float], dict[str, Any]]]:
  """Each view's metrics at its own point, and the model it ships.

  The base view is evaluated at ``params``; a residual view at ``rsgd.eval_params(...,
  which=view.which)``, with ``reference_*`` at ``params``. The test set is evaluated at ``params``
  once for all views (the base view's test metrics are that evaluation, unless it re-estimates its
  batch statistics).
  """
  params, opt_state = state["params"], state["opt_state"]

  @functools.cache
  def reference() -> tuple[float, float]:
    return evaluate(
      steps, params, state["batch_stats"], data.eval_batches("test"), batch_sharding, beat
    )

  recompute = config.get("recompute_bn_stats", False)
  results = {}
  for view in view_list:
    if view.has_residual:
      eval_params = steps.view_point(opt_state, params, which=view.which)
    else:
      eval_params = params
    eval_stats = state["batch_stats"]
    if recompute:
      eval_stats = recompute_batch_stats(
        steps,
        eval_params,
        eval_stats,
        data.eval_batches("train_eval"),
        batch_sharding,
        config.bn_recompute_batches,
      )
    if view.has_residual or recompute:
      test_loss, test_accuracy = evaluate(
        steps, eval_params, eval_stats, data.eval_batches("test"), batch_sharding, beat
      )
    else:
      test_loss, test_accuracy = reference()
    train_loss, train_accuracy = evaluate(
      steps, eval_params, eval_stats, data.eval_batches("train_eval"), batch_sharding, beat
    )
    if view.has_residual:
      reference_loss, reference_accuracy = reference()
      proximity = float(steps.proximity(opt_state, params, which=view.which))
    else:
      reference_loss, reference_accuracy, proximity = test_loss, test_accuracy, 0.0
    metrics = {
      "train_loss": train_loss,
      "train_accuracy": train_accuracy,
      "test_loss": test_loss,
      "test_accuracy": test_accuracy,
      "reference_test_loss": reference_loss,
      "reference_test_accuracy": reference_accuracy,
      "generalization_error": test_loss - train_loss,
      "proximity": proximity,
    }
    results[view.name] = (metrics, {"params": eval_params, "batch_stats": eval_stats})
  return results
