"""Defaults shared by every recipe: every field a run reads, with its default and what it means,
is ``resnet_jax.spec.default_config`` (the same defaults fill in older workdirs' config.json).

A recipe file starts from ``get_config()`` and changes what differs; any field can also be
set on the command line: ``--config.batch_size=512 --config.optimizer.name=lars``.
"""

import ml_collections

from resnet_jax.spec import default_config


def get_config() -> ml_collections.ConfigDict:
    """ResNet-50 on ImageNet, SGD + Nesterov, cosine; the base the recipes modify."""
    return default_config()
