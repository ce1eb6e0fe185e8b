"""One training, many views: the optimizers of a ``config.optimizer`` list that share a trajectory.

The residual transformations pass the base optimizer's updates through unchanged (the paper's
Theorem 2), so ``sgdm``, ``rsgdm-scale``, ``rsgdm-sign`` and ``rsgdm-topk`` with one seed follow one
trajectory: the run trains it once, with every residual of the list in one optax chain, and
evaluates each name as a *view* (the base at ``params``, a residual view at
``rsgd.eval_params(state, params, which=view.which)``).

A name may carry its own setting after ``@``: ``rsgdm-scale@0.25`` (alpha), ``rsgdm-topk@0.05``
(the kept fraction). Names that change the trajectory (SignSGD, EF, Adam against SGDm, SGD against
SGDm) cannot share a training; :func:`parse_views` refuses such a list and says why.
"""

import dataclasses
from collections.abc import Sequence

import optax

import rsgd_optax as rsgd
from examples.common import optimizers

# What each trajectory is, in words (for the refusal message).
_TRAJECTORY_WORDS = {
  "sgd": "plain SGD's trajectory",
  "sgdm": "SGD with momentum's trajectory",
  "adam": "Adam's trajectory",
}


@dataclasses.dataclass(frozen=True)
class View:
  """One name of the list: what it is called, its optimizer and where its residual sits.

  Attributes:
    name: as written in the list (``"rsgdm-scale@0.25"``); names its folder and its checkpoint item.
    optimizer: the optimizer name without the setting (``"rsgdm-scale"``).
    setting: the ``@`` value (alpha for ``*-scale``, the fraction for ``*-topk``), or ``None``.
    which: the index of its residual among the chain's residual transformations (for
      ``rsgd.eval_params(..., which=)``); ``None`` for a view without residual (the base).
  """

  name: str
  optimizer: str
  setting: float | None = None
  which: int | None = None

  @property
  def has_residual(self) -> bool:
    return self.which is not None


def trajectory(optimizer: str) -> str:
  """The optimizer whose trajectory ``optimizer``'s ``params`` follow.

  ``rsgd-*`` follow ``sgd``, ``rsgdm-*`` follow ``sgdm``, ``adam-*`` follow ``adam``; every other
  name (SignSGD, EF, AdaGrad and the bases themselves) is its own trajectory.
  """
  optimizers.has_residual(optimizer)  # validates the name
  for prefix, base in (("rsgdm-", "sgdm"), ("rsgd-", "sgd"), ("adam-", "adam")):
    if optimizer.startswith(prefix):
      return base
  return optimizer


def _why(optimizer: str) -> str:
  base = trajectory(optimizer)
  if optimizer.startswith(("signsgd", "ef-")):
    return f"{optimizer} moves the model by its compressed step (its own trajectory)"
  words = _TRAJECTORY_WORDS.get(base, f"{base}'s own trajectory")
  if base == optimizer:
    return f"{optimizer} follows {words}"
  return f"{optimizer} follows {words} ({base})"


def _split_setting(name: str) -> tuple[str, float | None]:
  optimizer, at, value = name.partition("@")
  if not at:
    return optimizer, None
  if not optimizer.endswith(("-scale", "-topk")):
    raise ValueError(
      f"{name!r}: only *-scale (alpha) and *-topk (fraction) views take an @ setting, "
      f"e.g. rsgdm-scale@0.25 or rsgdm-topk@0.05."
    )
  try:
    setting = float(value)
  except ValueError:
    raise ValueError(f"{name!r}: the value after @ must be a number, got {value!r}.") from None
  if not 0 < setting <= 1:
    raise ValueError(f"{name!r}: the value after @ must be in (0, 1], got {setting}.")
  return optimizer, setting


def parse_views(spec: str) -> list[View]:
  """Parses ``config.optimizer``: one name, or a comma-separated list sharing one trajectory.

  Raises:
    ValueError: an unknown name, a bad ``@`` setting, a duplicate, or names whose trajectories
      differ (the message names them and says why).
  """
  names = [part.strip() for part in str(spec).split(",")]
  if not all(names):
    raise ValueError(f"config.optimizer={spec!r} has an empty name; separate names by one comma.")
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(
      f"config.optimizer={spec!r} names {', '.join(duplicates)} more than once; each view needs "
      "its own name (give a different @ setting to compare settings)."
    )
  parsed = [(name, *_split_setting(name)) for name in names]
  for _, optimizer, _ in parsed:
    optimizers.has_residual(optimizer)  # an unknown name fails here, with the valid ones listed
  bases = {trajectory(optimizer) for _, optimizer, _ in parsed}
  if len(bases) > 1:
    reasons = "; ".join(_why(optimizer) for _, optimizer, _ in parsed)
    raise ValueError(
      f"config.optimizer={spec!r} mixes optimizers that do not share one trajectory: {reasons}. "
      "Only a base and its residual variants (e.g. sgdm,rsgdm-scale,rsgdm-sign,rsgdm-topk or "
      "adam,adam-scale,adam-sign,adam-topk) are views of one training; train the others "
      "separately (the sweep groups them for you)."
    )
  views, index = [], 0
  for name, optimizer, setting in parsed:
    which = None
    if optimizers.has_residual(optimizer):
      which, index = index, index + 1
    views.append(View(name, optimizer, setting, which))
  return views


def group_by_trajectory(names: Sequence[str]) -> list[list[str]]:
  """Groups names (in their order of first appearance) into lists that can share one training."""
  groups: dict[str, list[str]] = {}
  for name in names:
    optimizer, _ = _split_setting(name)
    groups.setdefault(trajectory(optimizer), []).append(name)
  return list(groups.values())


def scheme(view: View, *, alpha: float, topk_fraction: float) -> rsgd.Scheme:
  """The residual scheme of a residual view, with its ``@`` setting if it has one."""
  if view.optimizer.endswith("-scale"):
    return rsgd.scaling(alpha if view.setting is None else view.setting)
  if view.optimizer.endswith("-sign"):
    return rsgd.scaled_sign()
  return rsgd.top_k(topk_fraction if view.setting is None else view.setting)


def make_optimizer(
  views: Sequence[View],
  learning_rate: float | optax.Schedule,
  *,
  momentum: float = 0.9,
  weight_decay: float = 0.0,
  alpha: float = 1 / 16,
  topk_fraction: float = 0.01,
) -> optax.GradientTransformation:
  """The one optimizer of a list of views: the base, then every view's residual, in list order.

  One view builds exactly :func:`examples.common.optimizers.make_optimizer`'s chain (today's state
  layout, so its checkpoints stay readable), with its ``@`` setting as alpha or fraction.
  """
  if len(views) == 1:
    (view,) = views
    if view.setting is not None:
      if view.optimizer.endswith("-scale"):
        alpha = view.setting
      else:
        topk_fraction = view.setting
    return optimizers.make_optimizer(
      view.optimizer,
      learning_rate,
      momentum=momentum,
      weight_decay=weight_decay,
      alpha=alpha,
      topk_fraction=topk_fraction,
    )
  base = optimizers.make_optimizer(
    trajectory(views[0].optimizer),
    learning_rate,
    momentum=momentum,
    weight_decay=weight_decay,
  )
  residuals = [
    rsgd.residual(scheme(v, alpha=alpha, topk_fraction=topk_fraction))
    for v in views
    if v.has_residual
  ]
  return optax.chain(base, *residuals)
