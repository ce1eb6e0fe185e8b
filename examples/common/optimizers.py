"""The paper's optimizers by name: one registry, one parser of ``config.optimizer``, one builder.

Every example selects its optimizer with ``config.optimizer``; this module is the only place that
knows what a name means. Each registered name (:data:`REGISTRY`) says which Optax base optimizer it
steps with, which trajectory its parameters follow, and what comes after the base:

* ``sgd``/``sgdm``, ``adam``, ``adamw``, ``adagrad``: the base optimizers (``m`` = heavy-ball
  momentum; ``adamw`` = Adam with decoupled weight decay on the matrices, Loshchilov & Hutter 2019).
* ``rsgd-*``/``rsgdm-*``/``adam-*``/``adamw-*``: the base followed by ``rsgd.residual(scheme)``: parameters
  follow the base trajectory, ``rsgd.eval_params`` gives the RSGD point (scheme ``scale``,
  ``sign`` or ``topk``).
* ``signsgd``/``signsgdm``: the base followed by ``rsgd.compress(rsgd.scaled_sign())``: the model
  moves by the compressed step (its own trajectory).
* ``ef-signsgd``/``ef-signsgdm``: the base followed by ``rsgd.error_feedback(rsgd.scaled_sign())``.

``config.optimizer`` is one name or a comma-separated list of *views* that share one trajectory
(``sgdm,rsgdm-scale,rsgdm-sign,rsgdm-topk``): the residual transformations pass the base updates
through unchanged (the paper's Theorem 2), so one training with every residual in one chain gives
each name's point. A ``*-scale`` or ``*-topk`` name may carry its own setting after ``@``
(``rsgdm-scale@0.25`` is alpha 1/4, ``rsgdm-topk@0.05`` keeps 5%).

One chain layout for one view or many: ``chain(base, *tails)`` where ``base`` is
``[add_decayed_weights ->] base optimizer`` and ``tails`` are the views' residuals (or the one
compression) in list order. Weight decay is added to the gradient before the base optimizer, as
PyTorch's ``SGD(weight_decay=)`` does (the paper's experiments used PyTorch), not decoupled; except
for ``adamw``, whose decay is decoupled (``optax.adamw``) and skips vectors (biases, norm scales).
With ``clip_norm > 0`` the gradient is first clipped to that global norm.
"""

import dataclasses
from collections.abc import Sequence

import jax
import optax

import rsgd_optax as rsgd
from examples.common import config_checks
from examples.common.errors import UserError


@dataclasses.dataclass(frozen=True)
class OptimizerName:
  """What one registered name means.

  Attributes:
    name: e.g. ``"rsgdm-scale"``.
    base: the Optax base optimizer it steps with: ``sgd``, ``sgdm``, ``adam``, ``adamw`` or
      ``adagrad``.
    tail: what follows the base: ``None``, ``"residual"``, ``"compress"`` or ``"error_feedback"``.
    scheme: the residual scheme (``"scale"``, ``"sign"``, ``"topk"``), or ``None``.
  """

  name: str
  base: str
  tail: str | None = None
  scheme: str | None = None

  @property
  def has_residual(self) -> bool:
    """Whether its state holds a residual (so ``rsgd.eval_params`` gives its point)."""
    return self.tail == "residual"

  @property
  def trajectory(self) -> str:
    """The name whose trajectory its ``params`` follow: the base for a residual, else itself."""
    return self.base if self.tail in (None, "residual") else self.name

  @property
  def setting(self) -> str | None:
    """The hyperparameter an ``@`` value sets (``"alpha"``, ``"topk_fraction"``), or ``None``."""
    return {"scale": "alpha", "topk": "topk_fraction"}.get(self.scheme or "")


_SCHEMES = ("scale", "sign", "topk")
_PREFIX = {"sgd": "rsgd", "sgdm": "rsgdm", "adam": "adam", "adamw": "adamw"}

REGISTRY: dict[str, OptimizerName] = {
  entry.name: entry
  for entry in (
    OptimizerName("sgd", "sgd"),
    OptimizerName("sgdm", "sgdm"),
    *(OptimizerName(f"rsgd-{s}", "sgd", "residual", s) for s in _SCHEMES),
    *(OptimizerName(f"rsgdm-{s}", "sgdm", "residual", s) for s in _SCHEMES),
    OptimizerName("signsgd", "sgd", "compress", "sign"),
    OptimizerName("signsgdm", "sgdm", "compress", "sign"),
    OptimizerName("ef-signsgd", "sgd", "error_feedback", "sign"),
    OptimizerName("ef-signsgdm", "sgdm", "error_feedback", "sign"),
    OptimizerName("adam", "adam"),
    OptimizerName("adagrad", "adagrad"),
    *(OptimizerName(f"adam-{s}", "adam", "residual", s) for s in _SCHEMES),
    OptimizerName("adamw", "adamw"),
    *(OptimizerName(f"adamw-{s}", "adamw", "residual", s) for s in _SCHEMES),
  )
}
OPTIMIZER_NAMES: tuple[str, ...] = tuple(REGISTRY)

# What each trajectory is, in words (for the refusal of a mixed list).
_TRAJECTORY_WORDS = {
  "sgd": "plain SGD's trajectory",
  "sgdm": "SGD with momentum's trajectory",
  "adam": "Adam's trajectory",
  "adamw": "AdamW's trajectory",
}


def lookup(name: str) -> OptimizerName:
  """The registry entry of ``name`` (without an ``@`` setting).

  Raises:
    UserError: an unknown name (the message lists the valid ones).
  """
  if name not in REGISTRY:
    raise UserError(f"Unknown optimizer {name!r}. Valid names: {', '.join(OPTIMIZER_NAMES)}.")
  return REGISTRY[name]


def has_residual(name: str) -> bool:
  """Whether ``name``'s optimizer state holds a residual (so ``rsgd.eval_params`` applies)."""
  return lookup(name).has_residual


def trajectory(name: str) -> str:
  """The optimizer whose trajectory ``name``'s ``params`` follow (``rsgdm-*`` follow ``sgdm``)."""
  return lookup(name).trajectory


@dataclasses.dataclass(frozen=True)
class View:
  """One name of a ``config.optimizer`` list.

  Attributes:
    name: in its one spelling (``"rsgdm-scale@0.25"``, see :func:`canonical_name`); names its
      folder and its checkpoint item.
    optimizer: the registered name without the setting (``"rsgdm-scale"``).
    setting: the ``@`` value (alpha for ``*-scale``, the fraction for ``*-topk``), or ``None``.
    which: the index of its residual among the chain's residuals (for
      ``rsgd.eval_params(..., which=)``); ``None`` for a view without residual.
  """

  name: str
  optimizer: str
  setting: float | None = None
  which: int | None = None

  @property
  def entry(self) -> OptimizerName:
    return REGISTRY[self.optimizer]

  @property
  def has_residual(self) -> bool:
    return self.which is not None

  @property
  def trajectory(self) -> str:
    return self.entry.trajectory


def split_setting(name: str) -> tuple[str, float | None]:
  """``"rsgdm-scale@0.25"`` -> ``("rsgdm-scale", 0.25)``; checks the name and the setting.

  Raises:
    UserError: an unknown name, an ``@`` on a name that takes none, a value not in (0, 1].
  """
  optimizer, at, value = name.partition("@")
  optimizer = optimizer.strip()
  entry = lookup(optimizer)
  if not at:
    return optimizer, None
  if entry.setting is None:
    raise UserError(
      f"{name!r}: only *-scale (alpha) and *-topk (fraction) views take an @ setting, "
      f"e.g. rsgdm-scale@0.25 or rsgdm-topk@0.05."
    )
  try:
    return optimizer, config_checks.fraction_after_at(value)
  except ValueError as error:
    raise UserError(f"{name!r}: {error}.") from None


def canonical_name(name: str) -> str:
  """A name in its one spelling: no spaces, the ``@`` value as :func:`config_checks.format_setting`
  writes it (``"rsgdm-topk @ 1e-2"`` -> ``"rsgdm-topk@0.01"``).

  Raises:
    UserError: as :func:`split_setting`.
  """
  optimizer, setting = split_setting(name.strip())
  return optimizer if setting is None else f"{optimizer}@{config_checks.format_setting(setting)}"


def canonical_spec(spec: str) -> str:
  """``config.optimizer`` in its one spelling: each name by :func:`canonical_name`, joined by
  commas without spaces (``"sgd, rsgd-topk@1e-2"`` -> ``"sgd,rsgd-topk@0.01"``); two spellings
  of one list name the same training.

  Raises:
    UserError: as :func:`parse_views`.
  """
  return ",".join(view.name for view in parse_views(spec))


def _why(entry: OptimizerName) -> str:
  if entry.tail in ("compress", "error_feedback"):
    return f"{entry.name} moves the model by its compressed step (its own trajectory)"
  words = _TRAJECTORY_WORDS.get(entry.trajectory, f"{entry.trajectory}'s own trajectory")
  if entry.trajectory == entry.name:
    return f"{entry.name} follows {words}"
  return f"{entry.name} follows {words} ({entry.trajectory})"


def parse_views(spec: str) -> list[View]:
  """Parses ``config.optimizer``: one name, or a comma-separated list sharing one trajectory.

  Raises:
    UserError: an unknown name, a bad ``@`` setting, a duplicate, or names whose trajectories
      differ (the message names them and says why).
  """
  written = [part.strip() for part in str(spec).split(",")]
  if not all(written):
    raise UserError(f"config.optimizer={spec!r} has an empty name; separate names by one comma.")
  names = [canonical_name(name) for name in written]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise UserError(
      f"config.optimizer={spec!r} names {', '.join(duplicates)} more than once; each view needs "
      "its own name (give a different @ setting to compare settings)."
    )
  parsed = [(name, *split_setting(name)) for name in names]
  if len({REGISTRY[optimizer].trajectory for _, optimizer, _ in parsed}) > 1:
    reasons = "; ".join(_why(REGISTRY[optimizer]) for _, optimizer, _ in parsed)
    raise UserError(
      f"config.optimizer={spec!r} mixes optimizers that do not share one trajectory: {reasons}. "
      "Only a base and its residual variants (e.g. sgdm,rsgdm-scale,rsgdm-sign,rsgdm-topk or "
      "adam,adam-scale,adam-sign,adam-topk) are views of one training; train the others "
      "separately (the sweep groups them for you)."
    )
  views, index = [], 0
  for name, optimizer, setting in parsed:
    which = None
    if REGISTRY[optimizer].has_residual:
      which, index = index, index + 1
    views.append(View(name, optimizer, setting, which))
  return views


def group_by_trajectory(names: Sequence[str]) -> list[list[str]]:
  """Groups names (in their order of first appearance, each in its one spelling,
  :func:`canonical_name`) into lists that can share one training."""
  groups: dict[str, list[str]] = {}
  for name in names:
    optimizer, _ = split_setting(name)
    groups.setdefault(trajectory(optimizer), []).append(canonical_name(name))
  return list(groups.values())


def _scheme(view: View, *, alpha: float, topk_fraction: float) -> rsgd.Scheme:
  scheme = view.entry.scheme
  if scheme == "scale":
    return rsgd.scaling(alpha if view.setting is None else view.setting)
  if scheme == "sign":
    return rsgd.scaled_sign()
  return rsgd.top_k(topk_fraction if view.setting is None else view.setting)


def _check_hyperparameters(momentum: float, weight_decay: float) -> None:
  if not (config_checks.is_finite_number(weight_decay) and weight_decay >= 0):
    raise UserError(f"weight_decay must be a finite number >= 0, got {weight_decay}.")
  if not (config_checks.is_finite_number(momentum) and 0 <= momentum < 1):
    raise UserError(f"momentum must be in [0, 1), got {momentum}.")


def base_optimizer(
  views: Sequence[View],
  learning_rate: float | optax.Schedule,
  *,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  clip_norm: float = 0.0,
) -> optax.GradientTransformation:
  """``[clip ->] [add_decayed_weights ->] base``: the part of the chain every view shares."""
  _check_hyperparameters(momentum, weight_decay)
  if clip_norm < 0:
    raise UserError(f"clip_norm must be >= 0 (0: no clipping), got {clip_norm}.")
  base = views[0].entry.base
  clip = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  if base == "adamw":
    # Decoupled decay on matrices and embeddings only: decaying biases and norm scales toward
    # zero is not what weight decay is for (GPT-2, nanoGPT and Flax's LM examples skip them).
    matrices = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
    return optax.chain(
      *clip, optax.adamw(learning_rate, b2=0.95, weight_decay=weight_decay, mask=matrices)
    )
  if base == "sgd":
    step = optax.sgd(learning_rate)
  elif base == "sgdm":
    step = optax.sgd(learning_rate, momentum=momentum)
  elif base == "adam":
    step = optax.adam(learning_rate)
  else:  # adagrad
    step = optax.adagrad(learning_rate)
  decay = [optax.add_decayed_weights(weight_decay)] if weight_decay else []
  return optax.chain(*clip, *decay, step) if clip or decay else step


def view_tails(
  views: Sequence[View], *, alpha: float = 1 / 16, topk_fraction: float = 0.01
) -> list[optax.GradientTransformation | None]:
  """What follows the base for each view, in list order (``None``: the view is the base)."""
  tails: list[optax.GradientTransformation | None] = []
  for view in views:
    tail = view.entry.tail
    if tail == "residual":
      tails.append(rsgd.residual(_scheme(view, alpha=alpha, topk_fraction=topk_fraction)))
    elif tail == "compress":
      tails.append(rsgd.compress(rsgd.scaled_sign()))
    elif tail == "error_feedback":
      tails.append(rsgd.error_feedback(rsgd.scaled_sign()))
    else:
      tails.append(None)
  return tails


def make_optimizer(
  views: str | Sequence[View],
  learning_rate: float | optax.Schedule,
  *,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  alpha: float = 1 / 16,
  topk_fraction: float = 0.01,
  clip_norm: float = 0.0,
) -> optax.GradientTransformation:
  """The one optimizer of one view or many: ``chain(base, *tails)`` (one layout for both).

  Args:
    views: a ``config.optimizer`` string (``"rsgdm-scale"``, ``"sgdm,rsgdm-sign@..."``) or the
      views :func:`parse_views` made of it.
    learning_rate: a constant or an ``optax.Schedule`` of the step count.
    momentum: heavy-ball momentum of the ``...m`` bases (ignored by the others).
    weight_decay: L2 coefficient added to the gradient before the base optimizer (``adamw``:
      its decoupled decay, on parameters of two or more dimensions).
    alpha: the scaling scheme's ``alpha`` (``*-scale`` without an ``@`` value).
    topk_fraction: fraction of entries the top-k scheme keeps (``*-topk`` without an ``@`` value).
    clip_norm: clip the gradient to this global norm first (``0``: no clipping).

  Raises:
    UserError: an unknown name, a list that cannot share a training, a hyperparameter out of range.
  """
  views = parse_views(views) if isinstance(views, str) else list(views)
  base = base_optimizer(
    views, learning_rate, momentum=momentum, weight_decay=weight_decay, clip_norm=clip_norm
  )
  tails = view_tails(views, alpha=alpha, topk_fraction=topk_fraction)
  return optax.chain(base, *(tail for tail in tails if tail is not None))


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
