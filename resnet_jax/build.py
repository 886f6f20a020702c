"""The one builder: a resolved run spec -> model, preprocessing preset, schedule and optimizer.

Training, evaluation, fine-tuning, prediction from a workdir and the benchmarks all build their
network here (``build_model``), so a config means the same network everywhere.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp
import optax

from resnet_jax import parallel as par
from resnet_jax import spec as run_spec
from resnet_jax.data.presets import Preset
from resnet_jax.models import ResNet, create_model
from resnet_jax.training import finetune, optim


@dataclasses.dataclass(frozen=True)
class Built:
    """What a run trains: the model (fine-tuning's frozen stages set), the preset that
    normalises uint8 batches in the steps, the learning-rate schedule and the optimizer."""

    model: ResNet
    preset: Preset
    lr_fn: optax.Schedule
    tx: optax.GradientTransformation


def build_model(
    config: Any,
    num_classes: int,
    *,
    parallel: par.DataParallel | None = None,
    dtype: str | None = None,
) -> ResNet:
    """The architecture of a complete config (``spec.config``, or ``spec.complete`` of a
    config.json) for ``num_classes``: float32 parameters, compute in ``dtype`` (default
    ``config.dtype``), BatchNorm over ``parallel``'s devices (None: one device, inference)."""
    settings = {
        "num_classes": num_classes,
        "dtype": jnp.dtype(dtype or config.dtype),
        "param_dtype": jnp.float32,
        "zero_init_last_bn": config.model.zero_init_last_bn,
        "space_to_depth": config.model.space_to_depth,
        "remat": config.model.remat,
        **config.model.kwargs.to_dict(),  # Any ResNet attribute, these included.
    }
    return create_model(
        config.model.name, **settings, **(parallel.model_overrides() if parallel else {})
    )


def model_from_config(config: Any, num_classes: int) -> ResNet:
    """A recorded run's architecture (a config.json, however old) in float32 on one device
    (no BN axes), for inference."""
    return build_model(run_spec.complete(config), num_classes, dtype="float32")


def preset_from_config(config: Any) -> Preset:
    """A recorded run's eval preprocessing (``spec.eval_preset`` of the completed config)."""
    return run_spec.eval_preset(run_spec.complete(config))


def build(spec: run_spec.RunSpec, parallel: par.DataParallel | None = None) -> Built:
    """Model, preset, schedule and optimizer of the run ``spec`` describes; fine-tuning freezes
    stages in the model and partitions the optimizer (frozen, backbone, head)."""
    config = spec.config
    model = build_model(config, spec.num_classes, parallel=parallel)
    lr_fn = optim.create_learning_rate_schedule(
        config.optimizer,
        batch_size=config.batch_size,
        steps_per_epoch=spec.steps_per_epoch,
        total_steps=spec.total_steps,
    )
    ft = config.finetune
    stages = run_spec.num_stages(config)
    frozen = finetune.frozen_stage_count(ft, stages)
    if frozen:
        model = model.clone(frozen_stages=frozen)
    if frozen or ft.backbone_lr_multiplier != 1.0:
        tx = finetune.create_finetune_optimizer(
            config.optimizer,
            lr_fn,
            frozen_stages=frozen,
            num_stages=stages,
            backbone_lr_multiplier=float(ft.backbone_lr_multiplier),
        )
    else:
        tx = optim.create_optimizer(config.optimizer, lr_fn)
    return Built(model, spec.preset, lr_fn, tx)
