"""ResNet family in Flax Linen."""

from resnet_jax.models.blocks import BasicBlock, Bottleneck, PreActBottleneck
from resnet_jax.models.registry import create_model, list_models, model_spec
from resnet_jax.models.resnet import ResNet

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "PreActBottleneck",
    "ResNet",
    "create_model",
    "list_models",
    "model_spec",
]
