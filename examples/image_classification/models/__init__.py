"""The models, built by name from the config."""

from collections.abc import Callable

from flax import nnx

from examples.image_classification.models.densenet import densenet121
from examples.image_classification.models.googlenet import googlenet
from examples.image_classification.models.resnet import resnet18, resnet50
from examples.image_classification.models.small_cnn import SmallCNN

MODELS: dict[str, Callable[..., nnx.Module]] = {
  "densenet121": densenet121,
  "googlenet": googlenet,
  "resnet18": resnet18,
  "resnet50": resnet50,
  "small_cnn": SmallCNN,
}


def create_model(name: str, num_classes: int, *, rngs: nnx.Rngs, **kwargs) -> nnx.Module:
  """Builds model ``name`` (a key of :data:`MODELS`) with ``num_classes`` outputs."""
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}. Valid names: {', '.join(sorted(MODELS))}.")
  return MODELS[name](num_classes, rngs=rngs, **kwargs)
