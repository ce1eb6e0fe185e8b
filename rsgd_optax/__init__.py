"""SGD(m) with residuals (RSGD(m)) as Optax gradient transformations.

>>> import optax
>>> import rsgd_optax as rsgd
>>> tx = optax.chain(optax.sgd(0.1, momentum=0.9), rsgd.residual_scale(1 / 16))
"""

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
  "CompressState",
  "ErrorFeedbackState",
  "ResidualState",
  "Scheme",
  "StepAwareScheme",
  "compress",
  "error_feedback",
  "eval_params",
  "find_residual_state",
  "proximity",
  "residual",
  "residual_scale",
  "residual_sign",
  "residual_topk",
  "scaled_sign",
  "scaling",
  "top_k",
)
