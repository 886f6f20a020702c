"""resnet-jax: the ResNet family in JAX/Flax and the system that trains it."""

from resnet_jax.models import ResNet, create_model, list_models
from resnet_jax.weights import load

__version__ = "0.1.0"
__all__ = ["ResNet", "create_model", "list_models", "load", "__version__"]
