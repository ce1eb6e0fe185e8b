"""SGD(m) with residuals (RSGD(m)) as Optax gradient transformations.

>>> import optax
>>> import rsgd_optax as rsgd
>>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_scale(1 / 16))

Where things are (imports go one way: each module imports only modules above it in this list):

- ``_dtypes``: float dtype choices that hold under strict dtype promotion.
- ``_tree``: pytree helpers: which leaves carry state, zeros like them, finding states by type,
  choosing one with ``which``, the key Flax NNX adds to a leaf's path.
- ``_topk``: the exact radix top-k selection.
- ``_schemes``: the residual schemes ``R``: scaling, scaled sign, top-k.
- ``_states``: the NamedTuple states, read both by the transformations and by the lookup.
- ``_residual``: Algorithm 1, top to bottom: ``residual`` and its shorthands, and the baselines
  ``error_feedback`` and ``compress``.
- ``_lookup``: finding the residual and averaging states in any nesting, ``eval_params`` (one
  function, for every state) and ``proximity``.
- ``_averaging``: ASGD / RASGD iterate averaging, switched on by the NT-ASGD trigger.
- ``_compressed``: compressed data-parallel gradient exchange with error feedback (``shard_map``).
- ``_finite``: skipping a non-finite step on every device at once, inside ``shard_map``.
"""

from rsgd_optax._averaging import (
  averaging_started,
  iterate_averaging,
  nonmonotone_trigger,
  start_averaging,
)
from rsgd_optax._compressed import (
  CompressedMeanState,
  ExactStepsState,
  TwoPhaseMeanState,
  compressed_mean,
  memory_ratio,
  memory_specs,
  resize_memory,
)
from rsgd_optax._finite import apply_if_finite_across
from rsgd_optax._lookup import eval_params, find_averaging_state, find_residual_state, proximity
from rsgd_optax._residual import (
  compress,
  error_feedback,
  residual,
  residual_scale,
  residual_sign,
  residual_topk,
)
from rsgd_optax._schemes import Scheme, StepAwareScheme, scaled_sign, scaling, top_k
from rsgd_optax._states import AveragingState, CompressState, ErrorFeedbackState, ResidualState

__version__ = "0.1.0"

__all__ = (
  "AveragingState",
  "CompressState",
  "CompressedMeanState",
  "ErrorFeedbackState",
  "ExactStepsState",
  "ResidualState",
  "Scheme",
  "StepAwareScheme",
  "TwoPhaseMeanState",
  "apply_if_finite_across",
  "averaging_started",
  "compress",
  "compressed_mean",
  "error_feedback",
  "eval_params",
  "find_averaging_state",
  "find_residual_state",
  "iterate_averaging",
  "memory_ratio",
  "memory_specs",
  "nonmonotone_trigger",
  "proximity",
  "residual",
  "residual_scale",
  "residual_sign",
  "residual_topk",
  "resize_memory",
  "scaled_sign",
  "scaling",
  "start_averaging",
  "top_k",
)
