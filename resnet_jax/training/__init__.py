"""The training system: state, optimizer, per-device steps, loop, metrics and plots."""

from resnet_jax.training.loop import train_and_evaluate
from resnet_jax.training.state import TrainState, create_train_state

__all__ = ["TrainState", "create_train_state", "train_and_evaluate"]
