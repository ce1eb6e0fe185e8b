"""The paper's optimizers, built by name from Optax and ``rsgd_optax`` pieces.

Every example selects its optimizer with ``config.optimizer``; this module turns that name into one
``optax.GradientTransformation`` so that a DenseNet run and an LSTM run build ``rsgdm-scale`` the
same way. The families (paper, section 7):

* ``sgd``/``sgdm``: the base optimizers (``m`` = heavy-ball momentum).
* ``rsgd-*``/``rsgdm-*``: the base followed by ``rsgd.residual(scheme)``: parameters follow the base
  trajectory, ``rsgd.eval_params`` gives the RSGD point.
* ``signsgd``/``signsgdm``: the base followed by ``rsgd.compress(rsgd.scaled_sign())``: the model
  moves by the compressed step, nothing remembered.
* ``ef-signsgd``/``ef-signsgdm``: the base followed by ``rsgd.error_feedback(rsgd.scaled_sign())``.
* ``adam``/``adagrad`` and ``adam-*`` (Adam with residuals, used by the graph example).

Weight decay is added to the gradient before the base optimizer, as PyTorch's ``SGD(weight_decay=)``
does (the paper's experiments used PyTorch), not decoupled as in AdamW.
"""

from collections.abc import Callable

import optax

import rsgd_optax as rsgd

_SCHEMES = ("scale", "sign", "topk")

OPTIMIZER_NAMES: tuple[str, ...] = (
  "sgd",
  "sgdm",
  *(f"rsgd-{s}" for s in _SCHEMES),
  *(f"rsgdm-{s}" for s in _SCHEMES),
  "signsgd",
  "signsgdm",
  "ef-signsgd",
  "ef-signsgdm",
  "adam",
  "adagrad",
  *(f"adam-{s}" for s in _SCHEMES),
)


def has_residual(name: str) -> bool:
  """Whether ``name``'s optimizer state holds a residual (so ``rsgd.eval_params`` applies)."""
  _check_name(name)
  return name.startswith(("rsgd-", "rsgdm-", "adam-"))


def _check_name(name: str) -> None:
  if name not in OPTIMIZER_NAMES:
    raise ValueError(f"Unknown optimizer {name!r}. Valid names: {', '.join(OPTIMIZER_NAMES)}.")


def _scheme(name: str, *, alpha: float, topk_fraction: float) -> Callable:
  if name == "scale":
    return rsgd.scaling(alpha)
  if name == "sign":
    return rsgd.scaled_sign()
  return rsgd.top_k(topk_fraction)


def make_optimizer(
  name: str,
  learning_rate: float | optax.Schedule,
  *,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  alpha: float = 1 / 16,
  topk_fraction: float = 0.01,
) -> optax.GradientTransformation:
  """Builds the optimizer called ``name`` (one of :data:`OPTIMIZER_NAMES`).

  Args:
    name: e.g. ``"sgdm"``, ``"rsgdm-scale"``, ``"ef-signsgd"``, ``"adam-topk"``.
    learning_rate: a constant or an ``optax.Schedule`` of the step count.
    momentum: heavy-ball momentum of the ``...m`` variants (ignored by the others).
    weight_decay: L2 coefficient added to the gradient before the base optimizer.
    alpha: the scaling scheme's ``alpha`` (``*-scale``).
    topk_fraction: fraction of entries the top-k scheme keeps (``*-topk``).

  Returns:
    The chained ``optax.GradientTransformation``.

  Raises:
    ValueError: for an unknown name or a hyperparameter out of range.
  """
  _check_name(name)
  if weight_decay < 0:
    raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
  if not 0 <= momentum < 1:
    raise ValueError(f"momentum must be in [0, 1), got {momentum}.")

  family, _, scheme_name = name.partition("-")
  if name.startswith("ef-"):
    family, scheme_name = name[len("ef-") :], ""

  if family in ("sgd", "rsgd", "signsgd"):
    base = optax.sgd(learning_rate)
  elif family in ("sgdm", "rsgdm", "signsgdm"):
    base = optax.sgd(learning_rate, momentum=momentum)
  elif family == "adam":
    base = optax.adam(learning_rate)
  else:  # adagrad
    base = optax.adagrad(learning_rate)

  if name.startswith("ef-"):
    tail = rsgd.error_feedback(rsgd.scaled_sign())
  elif family.startswith("signsgd"):
    tail = rsgd.compress(rsgd.scaled_sign())
  elif scheme_name:
    tail = rsgd.residual(_scheme(scheme_name, alpha=alpha, topk_fraction=topk_fraction))
  else:
    tail = None

  parts = []
  if weight_decay:
    parts.append(optax.add_decayed_weights(weight_decay))
  parts.append(base)
  if tail is not None:
    parts.append(tail)
  return optax.chain(*parts)


def step_decay_schedule(
  base_learning_rate: float,
  steps_per_epoch: int,
  decay_epochs: tuple[int, ...],
  factor: float = 0.1,
) -> optax.Schedule:
  """Piecewise-constant learning rate: times ``factor`` at the start of each of ``decay_epochs``.

  The paper's schedules (x0.1 at epochs 100 and 200 of 300; at 30 and 60 of 90).
  """
  boundaries = {int(epoch * steps_per_epoch): factor for epoch in decay_epochs}
  return optax.piecewise_constant_schedule(base_learning_rate, boundaries)
