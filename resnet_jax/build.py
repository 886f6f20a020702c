"""The one builder: a resolved run spec -> model, preprocessing preset, schedule and optimizer.

Training, evaluation, fine-tuning, prediction from a workdir and the benchmarks all build their
network here (``build_model``), so a config means the same network everywhere.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax import backend as backends
from resnet_jax import parallel as par
from resnet_jax import spec as run_spec
from resnet_jax.data import presets
from resnet_jax.models import ResNet, create_model, model_spec
from resnet_jax.training import ema, erasing, finetune, mixup, optim
from resnet_jax.training.steps import AugmentFn, LossFn


@dataclasses.dataclass(frozen=True)
class Built:
    """What a run trains: the model (fine-tuning's frozen stages set), the preset that
    normalises uint8 batches in the steps, the learning-rate schedule, the optimizer, the
    backend (its forward options compile the eval step), the loss, the on-device batch
    augmentation (None: none) and the weight EMA's decay (None: no EMA)."""

    model: ResNet
    preset: presets.Preset
    lr_fn: optax.Schedule
    tx: optax.GradientTransformation
    backend: backends.Backend
    loss_fn: LossFn = optim.cross_entropy
    augment_fn: AugmentFn | None = None
    ema_decay: ema.DecaySchedule | None = None


def build_model(
    config: Any,
    num_classes: int,
    *,
    parallel: par.DataParallel | None = None,
    dtype: str | None = None,
    backend: backends.Backend | None = None,
) -> ResNet:
    """The architecture of a complete config (``spec.config``, or ``spec.complete`` of a
    config.json) for ``num_classes``: float32 parameters, compute in ``dtype`` (default
    ``config.dtype``), BatchNorm over ``parallel``'s devices (None: one device, inference),
    the convolution of ``backend`` (default ``backend_of(config, parallel)``)."""
    settings = {
        "num_classes": num_classes,
        "dtype": jnp.dtype(dtype or config.dtype),
        "param_dtype": jnp.float32,
        "zero_init_last_bn": config.model.zero_init_last_bn,
        "space_to_depth": config.model.space_to_depth,
        "remat": config.model.remat,
        "drop_path_rate": config.model.drop_path_rate,
        "conv_general_dilated": (backend or backend_of(config, parallel)).conv_general_dilated,
        **config.model.kwargs.to_dict(),  # Any ResNet attribute, these included.
    }
    return create_model(
        config.model.name, **settings, **(parallel.model_overrides() if parallel else {})
    )


def backend_of(config: Any, parallel: par.DataParallel | None = None) -> backends.Backend:
    """``config.backend`` for the run's devices; a ConfigError naming the fix if it cannot be."""
    from resnet_jax.training.validate import ConfigError

    platform = (parallel.devices if parallel else jax.devices())[0].platform
    try:
        return backends.get_backend(config.backend, platform)
    except ValueError as e:
        raise ConfigError(str(e)) from e


def model_from_config(config: Any, num_classes: int) -> ResNet:
    """A recorded run's architecture (a config.json, however old) in float32 on one device
    (no BN axes), for inference: the plain model, whatever backend trained it."""
    config = run_spec.complete(config)
    return build_model(config, num_classes, dtype="float32", backend=backends.Backend())


def model_from_name(name: str, **arguments: Any) -> ResNet:
    """A registered architecture with ResNet ``arguments`` (a weights card's) for weights,
    conversion and inference: ``model_from_config``'s model, initialised as the registry's."""
    classes = model_spec(name).kwargs.get("num_classes", ResNet.num_classes)
    model = {"name": name, "zero_init_last_bn": False, "kwargs": arguments}
    return model_from_config(ml_collections.ConfigDict({"model": model}), classes)


def preset_from_config(config: Any) -> presets.Preset:
    """A recorded run's eval preprocessing (``presets.eval_preset`` of the completed config)."""
    return presets.eval_preset(run_spec.complete(config).data)


def loss_function(config: Any) -> LossFn:
    """The config's per-example training loss on class indices or (mixed) soft targets."""
    if config.loss == "bce":
        from resnet_jax.training.losses import binary_cross_entropy

        return functools.partial(
            binary_cross_entropy,
            smoothing=config.label_smoothing,
            target_threshold=config.bce_target_threshold,
        )
    return functools.partial(optim.cross_entropy, label_smoothing=config.label_smoothing)


def augment_function(config: Any, num_classes: int) -> AugmentFn | None:
    """Random Erasing then Mixup/CutMix (timm's order) of a normalised batch on the device, as
    the config sets them; None when it sets neither."""
    erase_prob = config.data.random_erase_prob
    mixing = config.mixup_alpha > 0 or config.cutmix_alpha > 0
    if not erase_prob and not mixing:
        return None
    mix = functools.partial(
        mixup.mix,
        num_classes=num_classes,
        mixup_alpha=config.mixup_alpha,
        cutmix_alpha=config.cutmix_alpha,
        switch_prob=config.mixup_switch_prob,
        prob=config.mixup_prob,
        label_smoothing=config.label_smoothing,
    )

    def augment(key: jax.Array, images: jax.Array, labels: jax.Array):
        erase_key, mix_key = jax.random.split(key)
        if erase_prob:
            images = erasing.random_erasing(erase_key, images, probability=erase_prob)
        return mix(mix_key, images, labels) if mixing else (images, labels)

    return augment


def build(spec: run_spec.RunSpec, parallel: par.DataParallel | None = None) -> Built:
    """Model, preset, schedule and optimizer of the run ``spec`` describes; fine-tuning freezes
    stages in the model and partitions the optimizer (frozen, backbone, head)."""
    config = spec.config
    backend = backend_of(config, parallel)
    model = build_model(config, spec.num_classes, parallel=parallel, backend=backend)
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
    ema_decay = None
    if config.ema_decay > 0:
        ema_decay = ema.decay_schedule(config.ema_decay, config.ema_warmup_power)
    return Built(
        model,
        spec.preset,
        lr_fn,
        tx,
        backend,
        loss_fn=loss_function(config),
        augment_fn=augment_function(config, spec.num_classes),
        ema_decay=ema_decay,
    )
