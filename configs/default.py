"""Defaults shared by every recipe: each field is what the training loop reads.

A recipe file starts from ``get_config()`` and changes what differs; any field can also be
set on the command line: ``--config.batch_size=512 --config.optimizer.name=lars``.
"""

import ml_collections

from resnet_jax.data import pipeline


def get_config() -> ml_collections.ConfigDict:
    """ResNet-50 on ImageNet, SGD + Nesterov, cosine; the base the recipes modify."""
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
    # Compute dtype: 'bfloat16' (params and BN statistics stay float32) or 'float32'.
    config.dtype = "float32"

    config.data = pipeline.default_data_config()

    config.batch_size = 256  # Global, over all devices and hosts.
    config.eval_batch_size = 256
    config.num_epochs = 90.0
    config.num_train_steps = -1  # > 0 overrides num_epochs.

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.name = "sgd"  # 'sgd' or 'lars'.
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
