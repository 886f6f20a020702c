"""A run's config resolved once: every default applied, the dataset's counts and the numbers that
follow from them computed, every impossible combination refused, then frozen.

``resolve`` runs once, at the entry point (``train_and_evaluate``); the builder
(``resnet_jax.build``), the loop and the workdir read the ``RunSpec`` it returns, and its
``record()`` is the run's ``config.json``. ``complete`` gives an earlier run's config.json the
same defaults.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from typing import Any

import ml_collections
from absl import logging

from resnet_jax.data import augment, grain_pipeline, pipeline, presets, sources
from resnet_jax.models import model_spec
from resnet_jax.training import optim, validate

DERIVED = "derived"  # config.json's section of the numbers resolved from the config and data.
FREEZE = ("none", "backbone", "stages")  # finetune.freeze
LOSSES = ("softmax_ce", "bce")
FROM_SOURCE = "init_from"  # data.preset value: the preprocessing that came with the weights.
PRESET_FIELDS = ("preset", "mean", "std", "interpolation", "crop_pct")


def default_config() -> ml_collections.ConfigDict:
    """Every field of a run with its default (ResNet-50 on ImageNet, SGD + Nesterov, cosine):
    the base ``configs/`` recipes modify and what ``complete`` fills in."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Initialisation, data order and augmentation all follow from it.

    config.model = ml_collections.ConfigDict()
    config.model.name = "resnet50"  # Any name of resnet_jax.list_models().
    config.model.zero_init_last_bn = True  # Goyal et al.: last BN scale of each block at 0.
    # Extra ResNet attributes (stage_widths, stem_width, ...): create_model(name, **kwargs).
    config.model.kwargs = ml_collections.ConfigDict()
    # The MLPerf TPU stem: the 7x7/2 conv as a 4x4 conv on 2x2 space-to-depth input, an exact
    # reparametrisation on the same parameters (checkpoints load either way); even sizes only.
    config.model.space_to_depth = False
    # Recompute each block's activations in the backward pass (nn.remat): less memory for
    # large per-device batches, about a third more compute.
    config.model.remat = False
    # Stochastic depth (drop path): block i of n drops its residual branch with probability
    # rate * i / (n - 1) in training (timm's rule; RSB A1/A2: 0.05); 0 = off.
    config.model.drop_path_rate = 0.0
    # Compute dtype: 'bfloat16' (params and BN statistics stay float32) or 'float32'.
    config.dtype = "float32"

    config.data = pipeline.default_data_config()

    config.batch_size = 256  # Global, over all devices and hosts.
    config.eval_batch_size = 256
    config.num_epochs = 90.0
    config.num_train_steps = -1  # > 0 overrides num_epochs.

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # 'sgd', 'lars' or 'lamb' (RSB; weight decay as for the rest).
    config.optimizer.base_learning_rate = 0.1  # Per 256 examples: peak = base * batch / 256.
    config.optimizer.momentum = 0.9
    config.optimizer.nesterov = True
    config.optimizer.weight_decay = 1e-4  # Conv and dense kernels only.
    config.optimizer.lr_schedule = "cosine"  # 'cosine', 'step', 'polynomial', 'constant'.
    config.optimizer.warmup_epochs = 5.0  # Linear from 0 to the peak.
    config.optimizer.lr_boundaries_steps = ()  # 'step': multiply by lr_decay_factor at each.
    config.optimizer.lr_decay_factor = 0.1
    config.optimizer.end_learning_rate = 0.0  # 'polynomial'.
    config.optimizer.polynomial_power = 2.0
    config.optimizer.grad_clip_norm = 0.0  # > 0 clips the global gradient norm.
    config.optimizer.lars_trust_coefficient = 0.001
    config.optimizer.lars_eps = 0.0
    config.label_smoothing = 0.0
    # 'softmax_ce' (softmax cross-entropy) or 'bce' (a sigmoid per class on the, possibly mixed,
    # targets: timm's BinaryCrossEntropy, the RSB A1-A3 loss).
    config.loss = "softmax_ce"
    # 'bce' only: targets above it become 1, the rest 0 (RSB: 0.2); None keeps them soft.
    config.bce_target_threshold = ml_collections.config_dict.placeholder(float)
    # Mixup / CutMix of each batch with itself reversed, on the device (timm's Mixup, 'batch'
    # mode): lambda ~ Beta(alpha, alpha); 0 turns each off (RSB A3: 0.1 and 1.0).
    config.mixup_alpha = 0.0
    config.cutmix_alpha = 0.0
    config.mixup_prob = 1.0  # Chance that a batch is mixed at all.
    config.mixup_switch_prob = 0.5  # With both alphas > 0: chance of CutMix rather than Mixup.
    # Weight EMA (timm's ModelEmaV3), kept in the state and checkpoints, evaluated beside the
    # raw weights (eval 'ema_top1'), the weights predict and export use; 0 = off, e.g. 0.9998.
    config.ema_decay = 0.0
    # > 0: the decay warms up as 1 - (1 + updates) ** -power up to ema_decay (timm: 3/4 for runs
    # under ~200k steps, 2/3 for longer); 0: ema_decay from the second update on.
    config.ema_warmup_power = 0.75

    # Fine-tuning (resnet_jax/training/finetune.py; configs/finetune_folder.py): the weights to
    # start from, a converted checkpoint dir or a training workdir ('' = train from scratch).
    # The head is replaced for the dataset's classes; a rerun resumes from the workdir instead.
    config.init_from = ""
    config.finetune = ml_collections.ConfigDict()
    # 'none': train everything; 'backbone': only the head (BN statistics frozen too);
    # 'stages': the stem and the first `frozen_stages` stages stay frozen, the rest trains.
    config.finetune.freeze = "none"
    config.finetune.frozen_stages = 0  # 'stages' only: 1..number of stages.
    config.finetune.backbone_lr_multiplier = 1.0  # Trainable backbone's rate / the head's.
    config.finetune.new_head = True  # False keeps the source's head (same classes).

    config.parallelism = "shard_map"  # 'shard_map' (jit over a device mesh) or 'pmap'.
    config.bn_group_size = 0  # Devices per BatchNorm group; 0 = all devices (sync BN).
    config.multihost = False  # Call jax.distributed.initialize() (also done when env says so).
    # 'xla': the model as written, XLA's default options, any platform. 'cpu_fast' (CPU only,
    # refused elsewhere): 1x1 convolutions as matrix products and YNNPACK's matrix products for
    # evaluation, at the same numbers; 1.3x or more for ResNet-50 on CPU, nothing for nets
    # without 1x1 convolutions (resnet_jax/backend.py, BENCHMARKS.md).
    config.backend = "xla"

    config.log_every_steps = 100
    config.eval_every_steps = 0  # 0: once per epoch; -1: never (not even at the end).
    config.num_eval_steps = -1  # -1: the whole validation split.
    config.checkpoint_every_steps = 0  # 0: once per epoch; always also at the end.
    config.keep_checkpoints = 3  # 0: no saves (a workdir's checkpoint is still resumed from).
    config.async_checkpointing = True
    # An unreadable newest checkpoint: False stops with an error naming it; True resumes from
    # the newest readable one and renames the unreadable ones to <step>.unreadable.
    config.restore_fallback = False
    # SIGTERM saves a checkpoint at the next step boundary and exits with status 75, Ctrl-C
    # likewise with 130 (train.py); multi-host runs check whether any host was signalled every
    # this many steps.
    config.preemption_check_every_steps = 10
    # A non-finite loss or gradient norm: 'stop' raises naming the step (its state is never
    # saved); 'skip' keeps the previous state for that step and counts it in the metrics.
    config.nonfinite = "stop"
    config.prefetch_batches = 2
    config.progress_bar = True
    config.tensorboard = True
    config.plot = True  # curves.png at the end.
    # After the final evaluation, confusion_matrix.png/.json for datasets with at most this many
    # classes (one more pass over the eval split); 0: never.
    config.confusion_matrix_max_classes = 100
    # A rerun in a workdir continues its run only under the same config: a change to a field
    # that alters the result (schedule, num_epochs/num_train_steps, batch size, learning rate,
    # data, seed, ...) is refused, naming each field. True continues the run's state under the
    # new values (e.g. more epochs). Logging, evaluation, checkpointing, fault-handling and
    # input-speed fields may change on any rerun (resnet_jax/training/workdir.py FREE_FIELDS).
    config.allow_config_change = False
    # JAX's persistent compilation cache, so that a restart loads the compiled steps: 'auto' =
    # the user cache (~/.cache/resnet_jax/jax); any local or gs:// directory; '' = off.
    config.compilation_cache_dir = "auto"
    # 'first:last' (e.g. '10:15'): a jax.profiler trace of those steps in <workdir>/profile, for
    # TensorBoard's profile plugin or XProf; '' = none.
    config.profile_steps = ""
    return config


def complete(config: Any) -> ml_collections.FrozenConfigDict:
    """``config`` (a ConfigDict, or the dict of a config.json, however old) with every missing
    field taken from ``default_config()``, frozen; lists become tuples."""
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    given.pop(DERIVED, None)
    return ml_collections.FrozenConfigDict(_merge(default_config().to_dict(), given))


def _merge(defaults: dict[str, Any], given: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``given`` over ``defaults``, section by section; fields the defaults lack are kept, with
    a warning (``where`` prefixes their names)."""
    unknown = sorted(set(given) - set(defaults))
    if unknown and defaults:
        logging.warning("Unknown config fields kept: %s", ", ".join(where + k for k in unknown))
    out = dict(defaults)
    for key, value in given.items():
        both = isinstance(out.get(key), dict) and isinstance(value, dict)
        out[key] = _merge(out[key], value, f"{where}{key}.") if both else value
    return out


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run, resolved: its complete config (frozen) and what follows from it, the devices
    and the dataset. Batch sizes are global; ``per_device_batch`` is the train batch's share."""

    config: ml_collections.FrozenConfigDict
    num_devices: int
    process_count: int
    num_classes: int
    class_names: tuple[str, ...] | None
    num_train: int
    num_eval: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    per_device_batch: int
    preset: presets.Preset  # The eval preprocessing; its normalisation is the steps' for uint8.

    @property
    def local_eval_batch(self) -> int:
        """This process's share of an eval batch."""
        return self.config.eval_batch_size // self.process_count

    def record(self) -> dict[str, Any]:
        """The run's config.json: every config field as before, the derived numbers under
        'derived' (ignored by ``complete`` and by the resume check)."""
        derived = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        del derived["config"]
        derived["preset"] = self.preset.to_dict()
        config = json.loads(self.config.to_json_best_effort())
        return json.loads(json.dumps({**config, DERIVED: derived}))


def num_stages(config: Any) -> int:
    """Stages after the stem of the config's architecture (a known model name)."""
    return len({**model_spec(config.model.name).kwargs, **config.model.kwargs}["stage_sizes"])


def preset_fields(preset: presets.Preset) -> dict[str, Any]:
    """The config.data fields that give ``preset``: its name if registered, else its numbers."""
    if preset.name in presets.PRESETS:
        return {"preset": preset.name}
    if preset.mode != "torch" or preset.resize_mode != "short_side":
        raise validate.ConfigError(
            f"The source's preprocessing {preset} is not a registered preset and cannot be set "
            "through data.mean/std/crop_pct; set data.preset or those fields yourself."
        )
    return {
        "preset": None,
        "mean": tuple(preset.mean),
        "std": tuple(preset.std),
        "interpolation": preset.interpolation,
        "crop_pct": preset.crop / preset.resize,
    }


def source_preprocessing(path: str) -> dict[str, Any]:
    """The config.data fields that feed inputs as the weights in ``path`` were fed: a converted
    checkpoint's preset, or a training workdir's data config. Raises ConfigError for neither."""
    from resnet_jax import card
    from resnet_jax.training import restore

    try:
        kind = card.kind(path)
    except FileNotFoundError as e:
        raise validate.ConfigError(f"init_from={path!r}: {e}") from None
    if kind == "weights":
        return preset_fields(card.read_card(path).preset)
    try:
        data = complete(restore.read_config(path)).data
    except FileNotFoundError as e:
        raise validate.ConfigError(f"init_from={path!r}: {e}") from e
    return {k: data[k] for k in PRESET_FIELDS}


def check_finetune(config: ml_collections.ConfigDict, num_stages: int) -> None:
    """Raises ConfigError for fine-tuning settings that cannot work."""
    ft = config.finetune
    errors = []
    if ft.freeze not in FREEZE:
        errors.append(f"finetune.freeze={ft.freeze!r} is not one of {FREEZE}.")
    if ft.freeze == "stages" and not 1 <= ft.frozen_stages <= num_stages:
        errors.append(
            f"finetune.frozen_stages={ft.frozen_stages} must be in [1, {num_stages}] with "
            "freeze='stages' (the stem and that many stages stay frozen)."
        )
    if ft.backbone_lr_multiplier < 0:
        errors.append(f"finetune.backbone_lr_multiplier={ft.backbone_lr_multiplier} must be >= 0.")
    if not config.init_from:
        if ft.freeze != "none":
            errors.append(
                f"finetune.freeze={ft.freeze!r} keeps the initial weights: set init_from to the "
                "converted checkpoint or training workdir to start from."
            )
        if config.data.preset == FROM_SOURCE:
            errors.append(f"data.preset={FROM_SOURCE!r} needs init_from to take the preset from.")
    if errors:
        raise validate.ConfigError("Invalid fine-tuning config:\n  - " + "\n  - ".join(errors))


def check_recipe(config: ml_collections.ConfigDict, num_devices: int) -> None:
    """Raises ConfigError for loss, Mixup/CutMix, EMA, drop path and augmentation settings
    that cannot work, naming each field."""
    errors = []
    if config.loss not in LOSSES:
        errors.append(f"loss={config.loss!r} is not one of {LOSSES}.")
    threshold = config.bce_target_threshold
    if threshold is not None and (config.loss != "bce" or not 0.0 <= threshold < 1.0):
        errors.append(
            f"bce_target_threshold={threshold} needs loss='bce' and a value in [0, 1) (RSB: "
            "0.2); leave it unset (None) to keep the targets soft."
        )
    get = lambda field: functools.reduce(
        lambda section, key: section[key], field.split("."), config
    )
    for field, hint in (
        ("ema_decay", "0 turns the EMA off, 0.9998 is usual"),
        ("model.drop_path_rate", "0 turns it off"),
    ):
        if not 0.0 <= get(field) < 1.0:
            errors.append(f"{field}={get(field)} must be in [0, 1) ({hint}).")
    for field in ("mixup_alpha", "cutmix_alpha", "ema_warmup_power"):
        if not get(field) >= 0.0:
            errors.append(f"{field}={get(field)} must be >= 0 (0 turns it off).")
    for field in ("mixup_prob", "mixup_switch_prob", "data.random_erase_prob"):
        if not 0.0 <= get(field) <= 1.0:
            errors.append(f"{field}={get(field)} must be a probability in [0, 1].")
    per_device = config.batch_size // max(num_devices, 1)
    if (config.mixup_alpha > 0 or config.cutmix_alpha > 0) and per_device % 2:
        errors.append(
            f"Mixup/CutMix mix each device's batch with itself reversed, which needs an even "
            f"share: batch_size={config.batch_size} over {num_devices} devices gives "
            f"{per_device}; use a batch_size that is an even multiple of {num_devices}."
        )
    try:
        augment.make_train_augment(config.data.auto_augment)
    except ValueError as e:
        errors.append(f"data.auto_augment={config.data.auto_augment!r}: {e}")
    if errors:
        raise validate.ConfigError("Invalid training recipe:\n  - " + "\n  - ".join(errors))


def check_augment_pipeline(data: ml_collections.ConfigDict, *, grain: bool | None) -> None:
    """Raises ConfigError when data.auto_augment is set but the run's input pipeline is not
    Grain's, the only one that applies it. ``grain`` is ``grain_pipeline.uses_grain``'s answer,
    or None when the dataset was not opened (data.pipeline and data.dataset decide)."""
    if grain is None:
        grain = data.pipeline == "grain" and data.dataset != "synthetic"
    if data.auto_augment in ("", "none") or grain:
        return
    raise validate.ConfigError(
        f"data.auto_augment={data.auto_augment!r} is applied by the Grain input pipeline only, "
        f"which this run does not use (data.pipeline={data.pipeline!r}, data.dataset="
        f"{data.dataset!r}): set data.pipeline='grain' (TFDS datasets must be stored as "
        "ArrayRecord for it), or data.auto_augment='' to train without it."
    )


def source_data_fields(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The data fields that ``data.preset='init_from'`` stands for (none without it); warns when
    the configured normalisation is not the one the ``init_from`` weights were fed."""
    if not config.init_from:
        return {}
    theirs = source_preprocessing(config.init_from)
    if config.data.preset == FROM_SOURCE:
        return theirs
    ours = presets.data_preset(config.data)
    theirs = presets.data_preset(ml_collections.ConfigDict({**config.data.to_dict(), **theirs}))
    if (ours.mode, ours.mean, ours.std) != (theirs.mode, theirs.mean, theirs.std):
        logging.warning(
            "init_from weights were fed %s inputs (mean %s, std %s), the data config feeds %s "
            "(mean %s, std %s); set --config.data.preset=%s to use theirs.",
            theirs.mode,
            theirs.mean,
            theirs.std,
            ours.mode,
            ours.mean,
            ours.std,
            FROM_SOURCE,
        )
    return {}


def resolve(
    config: Any,
    *,
    num_devices: int,
    process_count: int,
    dataset_info: pipeline.DatasetInfo | None = None,
    cache_dir: Any = None,
) -> RunSpec:
    """The frozen RunSpec of ``config``; raises validate.ConfigError naming every field that
    cannot work (before any data is read, except the dataset's counts when not given; a
    folder's index is kept in ``cache_dir``, the run's workdir)."""
    complete_config = complete(config)
    validate.check_config(complete_config, num_devices=num_devices, process_count=process_count)
    check_finetune(complete_config, num_stages(complete_config))
    check_recipe(complete_config, num_devices)
    resolved = complete_config.as_configdict()
    resolved.data.update(source_data_fields(complete_config))
    grain = None  # Whether Grain reads the data: known once the dataset is opened.
    if dataset_info is None:
        try:
            dataset_info = pipeline.get_dataset_info(resolved.data, cache_dir=cache_dir)
            grain = grain_pipeline.uses_grain(resolved.data)  # tf.data without TF fails here.
        except (ValueError, FileNotFoundError, sources.NoTensorFlowError) as e:
            raise validate.ConfigError(f"data ({resolved.data.dataset!r}): {e}") from e
    check_augment_pipeline(resolved.data, grain=grain)
    steps_per_epoch = dataset_info.num_train // resolved.batch_size
    total_steps = resolved.num_train_steps
    if total_steps <= 0:
        total_steps = int(round(resolved.num_epochs * steps_per_epoch))
    validate.check_schedule(resolved, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    frozen = ml_collections.FrozenConfigDict(resolved)
    return RunSpec(
        config=frozen,
        num_devices=num_devices,
        process_count=process_count,
        num_classes=dataset_info.num_classes,
        class_names=tuple(dataset_info.class_names) if dataset_info.class_names else None,
        num_train=dataset_info.num_train,
        num_eval=dataset_info.num_eval,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        warmup_steps=optim.warmup_steps(resolved.optimizer, steps_per_epoch),
        per_device_batch=resolved.batch_size // num_devices,
        preset=presets.eval_preset(frozen.data),
    )
