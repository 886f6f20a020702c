"""Checks a run's config before anything is compiled, with messages that say what to change.

``check_config`` needs only the (complete) config and the device count; ``check_workdir`` only
the path; ``check_schedule`` runs once the dataset size (and so the number of steps) is known.
``resnet_jax.spec.resolve`` runs the config checks; the loop checks the workdir.
"""

from __future__ import annotations

import functools
import tempfile

import ml_collections

from resnet_jax import storage
from resnet_jax.data.presets import (
    EVAL_PREPROCESS,
    IMAGE_DTYPES,
    INTERPOLATIONS,
    TRAIN_PREPROCESS,
)
from resnet_jax.models import list_models, model_spec
from resnet_jax.parallel import PARALLELISM_MODES, check_batch_size
from resnet_jax.training.optim import OPTIMIZERS, SCHEDULES, warmup_steps
from resnet_jax.training.profile import parse_steps

DTYPES = ("float32", "bfloat16", "float16")
NONFINITE = ("stop", "skip")
# Fields with a fixed set of values: (dotted name, the values, what the message adds).
CHOICES = (
    ("dtype", DTYPES, ""),
    ("parallelism", PARALLELISM_MODES, ""),
    ("optimizer.name", OPTIMIZERS, ""),
    ("optimizer.lr_schedule", SCHEDULES, ""),
    (
        "data.image_dtype",
        IMAGE_DTYPES,
        " ('uint8' ships pixels and normalises them on the devices)",
    ),
    ("data.interpolation", INTERPOLATIONS, ""),
    ("data.pipeline", ("grain", "tfdata"), ""),
    ("data.train_preprocess", TRAIN_PREPROCESS, ""),
    ("data.eval_preprocess", EVAL_PREPROCESS, ""),
    ("nonfinite", NONFINITE, ""),
)


class ConfigError(ValueError):
    """The config describes a run that cannot work."""


def min_image_size(model_kwargs: dict) -> int:
    """Smallest input for which every stride-2 stage still has a pixel to work on."""
    stages = len(model_kwargs.get("stage_sizes", (1, 1, 1, 1)))
    stem_stride = 1 if model_kwargs.get("stem") == "cifar" else 4
    return stem_stride * 2 ** (stages - 1)


def check_config(
    config: ml_collections.ConfigDict, *, num_devices: int, process_count: int
) -> None:
    """Raises ConfigError for an unknown model, dtype, optimizer or an unsplittable batch."""
    errors = []
    if config.model.name not in list_models():
        errors.append(
            f"Unknown model {config.model.name!r}. Known models: {', '.join(list_models())}."
        )
    for field, allowed, why in CHOICES:
        value = functools.reduce(getattr, field.split("."), config)
        if value not in allowed:
            errors.append(f"{field} {value!r} is not one of {allowed}{why}.")
    errors += optimizer_problems(config.optimizer)
    if config.preemption_check_every_steps < 1:
        errors.append(
            f"preemption_check_every_steps={config.preemption_check_every_steps} must be >= 1."
        )
    try:
        parse_steps(config.profile_steps)
    except ValueError as e:
        errors.append(str(e))
    if not 0.0 <= config.label_smoothing < 1.0:
        errors.append(f"label_smoothing={config.label_smoothing} must be in [0, 1).")
    for what in ("batch_size", "eval_batch_size"):
        try:
            check_batch_size(
                config[what], num_devices=num_devices, process_count=process_count, what=what
            )
        except ValueError as e:
            errors.append(str(e))
    group = config.bn_group_size
    if group > 0 and (num_devices % min(group, num_devices)):
        errors.append(
            f"bn_group_size={group} must divide the number of devices ({num_devices}); "
            "0 means one BN group over all devices."
        )
    if config.num_train_steps <= 0 and config.num_epochs <= 0:
        errors.append("Set num_epochs > 0 or num_train_steps > 0.")
    if config.model.name in list_models():
        kwargs = {**model_spec(config.model.name).kwargs, **config.model.kwargs.to_dict()}
        smallest = min_image_size(kwargs)
        for field in ("image_size", "eval_image_size"):
            size = config.data[field]
            if size < smallest and (size or field == "image_size"):
                errors.append(
                    f"data.{field}={size} is too small for {config.model.name!r}: its stride-2 "
                    f"stages need at least {smallest} px"
                    + (" (0 evaluates at image_size)." if field == "eval_image_size" else ".")
                )
    if errors:
        raise ConfigError("Invalid config:\n  - " + "\n  - ".join(errors))


def optimizer_problems(opt: ml_collections.ConfigDict) -> list[str]:
    """Optimizer numbers no run can train with (a negative rate climbs the loss), one per line."""
    errors = []
    if not opt.base_learning_rate > 0:
        errors.append(
            f"optimizer.base_learning_rate={opt.base_learning_rate} must be > 0: it is the peak "
            "rate per 256 examples (the recipes use 0.1 for SGD)."
        )
    if not 0.0 <= opt.momentum < 1.0:
        errors.append(
            f"optimizer.momentum={opt.momentum} must be in [0, 1): 0.9 is usual, 0 is plain SGD."
        )
    for field, what in (
        ("weight_decay", "0 turns it off"),
        ("warmup_epochs", "0 starts at the peak rate"),
        ("end_learning_rate", "the 'polynomial' schedule's final rate"),
        ("grad_clip_norm", "0 turns clipping off"),
    ):
        if not opt[field] >= 0:
            errors.append(f"optimizer.{field}={opt[field]} must be >= 0 ({what}).")
    if not opt.lr_decay_factor > 0:
        errors.append(
            f"optimizer.lr_decay_factor={opt.lr_decay_factor} must be > 0: the 'step' schedule "
            "multiplies the rate by it at each boundary (0.1 is usual)."
        )
    return errors


def _probe_write(directory: str) -> None:
    """Creates and removes a nameless file in ``directory``: raises OSError if it cannot."""
    with tempfile.TemporaryFile(dir=directory):
        pass


def check_workdir(workdir: storage.PathLike) -> None:
    """Raises ConfigError when ``workdir`` cannot hold the run's files (a file is in the way or
    it cannot be written), before anything is built. Creates nothing."""
    problem = storage.remote_problem(workdir, "--workdir")
    if problem:
        raise ConfigError(problem)
    fix = "pass --workdir=DIR naming a directory you can write to (new, or an earlier run's)"
    path = existing = storage.path(workdir)
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {existing}, a file"
        raise ConfigError(f"workdir {workdir} {where}, not a directory: {fix}.")
    if storage.is_remote(workdir):
        return
    try:
        _probe_write(existing)
    except OSError as e:
        what = "is not writable" if existing == path else f"cannot be created in {existing}"
        raise ConfigError(f"workdir {workdir} {what} ({e.strerror or e}): {fix}.") from None


def check_schedule(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int, total_steps: int
) -> None:
    """Raises ConfigError when warmup or decay boundaries do not fit in the run."""
    opt = config.optimizer
    warmup = warmup_steps(opt, steps_per_epoch)
    errors = []
    if steps_per_epoch < 1:
        errors.append(
            f"batch_size={config.batch_size} is larger than the training set: "
            "not even one step per epoch."
        )
    if total_steps < 1:
        errors.append(f"The run has {total_steps} training steps; it needs at least one.")
    if warmup and warmup >= total_steps:
        errors.append(
            f"warmup ({opt.warmup_epochs} epochs = {warmup} steps) must be shorter than the "
            f"run ({total_steps} steps)."
        )
    if opt.lr_schedule == "step":
        bad = [b for b in opt.lr_boundaries_steps if not warmup <= b < total_steps]
        if bad:
            errors.append(
                f"optimizer.lr_boundaries_steps {bad} lie outside [warmup={warmup}, "
                f"total={total_steps})."
            )
    if errors:
        raise ConfigError("Invalid schedule:\n  - " + "\n  - ".join(errors))
