"""SGD(m) with residuals (RSGD(m)) as Optax gradient transformations.

>>> import optax
>>> import rsgd_optax as rsgd
>>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_scale(1 / 16))
"""

from rsgd_optax._averaging import (
  AveragingState,
  averaging_started,
  find_averaging_state,
  iterate_averaging,
  nonmonotone_trigger,
  start_averaging,
)
from rsgd_optax._residual import (
  CompressState,
  ErrorFeedbackState,
  ResidualState,
  compress,
  error_feedback,
  eval_params,
  find_residual_state,
  proximity,
  residual,
  residual_scale,
  residual_sign,
  residual_topk,
)
from rsgd_optax._schemes import Scheme, StepAwareScheme, scaled_sign, scaling, top_k

__version__ = "0.1.0"

__all__ = (
  "AveragingState",
  "CompressState",
  "ErrorFeedbackState",
  "ResidualState",
  "Scheme",
  "StepAwareScheme",
  "averaging_started",
  "compress",
  "error_feedback",
  "eval_params",
  "find_averaging_state",
  "find_residual_state",
  "iterate_averaging",
  "nonmonotone_trigger",
  "proximity",
  "residual",
  "residual_scale",
  "residual_sign",
  "residual_topk",
  "scaled_sign",
  "scaling",
  "start_averaging",
  "top_k",
)
