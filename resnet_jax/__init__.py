"""resnet-jax: the ResNet family in JAX/Flax and the system that trains it."""

__version__ = "0.1.0"
__all__ = ["ResNet", "create_model", "list_models", "load", "__version__"]


def __getattr__(name: str):
    """Loads the models (and JAX) on first use, so input worker processes start without them."""
    if name in ("ResNet", "create_model", "list_models"):
        from resnet_jax import models

        return getattr(models, name)
    if name == "load":
        from resnet_jax.weights import load

        return load
    raise AttributeError(f"module 'resnet_jax' has no attribute {name!r}")
