"""``train_and_evaluate(config, workdir)``: the training loop and everything at its edges.

Order of work: check the config (no compile), find the dataset, build mesh, model and
optimizer, check that the workdir holds this run or none (before writing anything there),
initialise or resume from its latest checkpoint, then train with periodic logging, evaluation
and asynchronous checkpoints; finally plot the curves.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from absl import logging

from resnet_jax import parallel as par
from resnet_jax.checkpoint import Checkpointer, architecture_fingerprint
from resnet_jax.data import presets
from resnet_jax.models import ResNet, create_model
from resnet_jax.training import (
    compile_cache,
    confusion,
    faults,
    finetune,
    optim,
    steps,
    validate,
)
from resnet_jax.training import workdir as workdirs
from resnet_jax.training.evaluate import evaluate
from resnet_jax.training.metrics import MetricWriter, ProgressBar
from resnet_jax.training.plot import plot_curves
from resnet_jax.training.profile import StepProfiler
from resnet_jax.training.state import TrainState, create_train_state
from resnet_jax.training.workdir import CONFIG_FILE


def build_model(
    config: ml_collections.ConfigDict, num_classes: int, parallel: par.DataParallel
) -> ResNet:
    """The configured architecture with compute dtype, BN axes and class count set."""
    kwargs = {
        "num_classes": num_classes,
        "space_to_depth": config.model.get("space_to_depth", False),
        "remat": config.model.get("remat", False),
        **config.model.kwargs.to_dict(),
    }
    return create_model(
        config.model.name,
        dtype=jnp.dtype(config.dtype),
        param_dtype=jnp.float32,
        zero_init_last_bn=config.model.zero_init_last_bn,
        **kwargs,
        **parallel.model_overrides(),
    )


@dataclasses.dataclass
class _Run:
    """Everything one run builds before its first step."""

    config: ml_collections.ConfigDict
    workdir: str
    info: Any
    steps_per_epoch: int
    total_steps: int
    parallel: par.DataParallel
    model: ResNet  # As trained (with fine-tuning's frozen stages); the confusion matrix uses it.
    lr_fn: optax.Schedule
    preset: presets.Preset  # Normalises uint8 batches in every step that takes images.
    train_fn: Callable
    eval_fn: Callable
    state: TrainState
    meta: dict[str, Any]
    ckpt: Checkpointer | None
    writer: MetricWriter
    progress: ProgressBar
    profiler: StepProfiler
    train_iter: Any = None  # Its state goes into each checkpoint's metadata.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says; returns the last train and eval metrics.

    Raises ``faults.Preempted`` after a SIGTERM or Ctrl-C (a checkpoint of the stop step is on disk)
    and ``faults.NonFiniteError`` when the loss or gradients stop being finite.
    """
    with faults.PreemptionWatcher(config.preemption_check_every_steps) as watcher:
        run = _setup(config, workdir)
        watcher.install()  # jax.distributed.initialize() may have put its own handler there.
        try:
            result = _train(run, watcher)
            result["confusion"] = confusion.write_final(run, result)
        finally:
            run.profiler.stop()
            run.progress.close()
            if run.ckpt is not None:
                run.ckpt.close()  # Waits for the asynchronous saves.
            run.writer.close()
    if config.plot and jax.process_index() == 0:
        run.progress.message(f"Curves: {plot_curves(workdir)}")
    return result


def _setup(config: ml_collections.ConfigDict, workdir: str) -> _Run:
    try:
        par.init_distributed(config.multihost)
    except ValueError as e:
        raise validate.ConfigError(str(e)) from e
    from resnet_jax.data import pipeline  # TensorFlow, if any, loads lazily behind this.

    devices = jax.devices()
    validate.check_config(config, num_devices=len(devices), process_count=jax.process_count())
    validate.check_workdir(workdir)
    try:
        info = pipeline.get_dataset_info(config.data, cache_dir=workdir)
    except (ValueError, FileNotFoundError) as e:
        raise validate.ConfigError(f"data ({config.data.dataset!r}): {e}") from e
    steps_per_epoch = info.num_train // config.batch_size
    total_steps = config.num_train_steps
    if total_steps <= 0:
        total_steps = int(round(config.num_epochs * steps_per_epoch))
    validate.check_schedule(config, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    parallel = par.create_data_parallel(config.parallelism, bn_group_size=config.bn_group_size)
    model = build_model(config, info.num_classes, parallel)
    lr_fn = optim.create_learning_rate_schedule(
        config.optimizer,
        batch_size=config.batch_size,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
    )
    tx = optim.create_optimizer(config.optimizer, lr_fn)
    model, tx, source = finetune.prepare(config, model, tx, lr_fn)
    size = config.data.image_size
    state = create_train_state(model, tx, seed=config.seed, image_shape=(size, size, 3))
    fingerprint = architecture_fingerprint(state.params)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    state = parallel.replicate(state)

    # Nothing in the workdir is written before it is known to hold this run (or none).
    state, start_step, ckpt = workdirs.resume(config, workdir, state, parallel, fingerprint)
    state = finetune.initialize(config, state, parallel, source)
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
            f.write(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")

    compile_cache.enable(config.compilation_cache_dir)
    preset = presets.data_preset(pipeline.with_defaults(config.data))  # for uint8 batches
    train_fn = steps.compile_train_step(
        parallel,
        model=model,
        tx=tx,
        label_smoothing=config.label_smoothing,
        skip_nonfinite=config.nonfinite == "skip",
        preset=preset,
    )
    eval_fn = steps.compile_eval_step(parallel, model=model, preset=preset)
    progress = ProgressBar(total_steps, enabled=is_main and config.progress_bar)
    progress.message(
        f"{config.model.name} ({num_params:,} params, {config.dtype}) on {config.data.dataset} "
        f"({info.num_train} train / {info.num_eval} eval images, {info.num_classes} classes): "
        f"{total_steps} steps of {config.batch_size} on {parallel.num_devices} "
        f"{devices[0].platform} device(s) with {parallel.mode}. Workdir: {os.path.abspath(workdir)}"
    )
    meta = {
        "model_name": config.model.name,
        "architecture": fingerprint,
        "num_classes": info.num_classes,
        "class_names": list(info.class_names) if info.class_names else None,
        "config": json.loads(config.to_json_best_effort()),
    }
    return _Run(
        config=config,
        workdir=workdir,
        info=info,
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        parallel=parallel,
        model=model,
        lr_fn=lr_fn,
        preset=preset,
        train_fn=train_fn,
        eval_fn=eval_fn,
        state=state,
        meta=meta,
        ckpt=ckpt,
        writer=MetricWriter(
            workdir, enabled=is_main, tensorboard=config.tensorboard, resume_step=start_step
        ),
        progress=progress,
        profiler=StepProfiler(config.profile_steps, workdir),
    )


def _train(run: _Run, watcher: faults.PreemptionWatcher) -> dict[str, Any]:
    from resnet_jax.data import grain_pipeline

    config, parallel, progress = run.config, run.parallel, run.progress
    state = run.state
    run.state = None  # Donated to the first step; keep no stale reference.
    start_step = int(jax.device_get(parallel.unreplicate(state).step))
    if start_step:
        progress.message(f"Resuming from the checkpoint at step {start_step}.")
    epoch_steps = run.steps_per_epoch
    eval_every = epoch_steps if config.eval_every_steps == 0 else config.eval_every_steps
    ckpt_every = config.checkpoint_every_steps or epoch_steps
    log_every = max(config.log_every_steps, 1)

    run.train_iter = train_iter = grain_pipeline.train_iterator(
        config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step,
        cache_dir=run.workdir,
    )  # fmt: skip
    batches = par.prefetch_to_devices(train_iter, parallel, size=config.prefetch_batches)
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    window = _Window()
    run_start = time.perf_counter()
    step = start_step
    for step in range(start_step + 1, run.total_steps + 1):
        run.profiler.before(step)
        state, metrics = run.train_fn(state, next(batches))
        run.profiler.after(step, (state, metrics))
        window.add(metrics)
        if step == start_step + 1:  # Keep the compile out of the throughput numbers.
            jax.block_until_ready(metrics)
            logging.info("First step (compile + run): %.1f s.", window.restart_clock())
            run_start = time.perf_counter()
        is_last = step == run.total_steps
        is_log, is_save = step % log_every == 0 or is_last, step % ckpt_every == 0 or is_last
        is_eval = config.eval_every_steps >= 0 and (step % eval_every == 0 or is_last)
        # Every process calls both at every step: each is collective on multi-host runs.
        stop = watcher.should_stop(step)
        stop = (run.ckpt is not None and run.ckpt.reached_preemption(step)) or stop
        stop = stop and not is_last
        if is_log or is_eval or (is_save and run.ckpt is not None) or stop:
            _check_finite(run, window)
        if is_log:
            last_train = window.summary(parallel, config.batch_size)
            last_train.update(epoch=step / epoch_steps, learning_rate=float(run.lr_fn(step - 1)))
            run.writer.write("train", step, last_train)
            done = step - start_step - 1
            left = run.total_steps - step
            eta = (time.perf_counter() - run_start) / done * left if done else None
            progress.update(
                step,
                eta_s=eta,
                loss=last_train["loss"],
                top1=last_train["top1"],
                lr=last_train["learning_rate"],
                **{"img/s": round(last_train.get("images_per_sec", 0.0), 1)},
            )
        if run.ckpt is not None and (is_save or stop):
            _save(run, state, step)  # Before evaluating: an eval error never loses the state.
        if is_eval:
            last_eval = _evaluate(run, state, step)
            window.restart_clock()  # Keep eval time out of images/s.
        if stop:
            if run.ckpt is not None:
                run.ckpt.wait()  # The checkpoint of this step is complete before the exit.
            where = run.ckpt.directory if run.ckpt is not None else None
            raise faults.Preempted(step, where, watcher.signum)
    if start_step >= run.total_steps:
        progress.message(f"Nothing to train: the checkpoint is at step {start_step} already.")
        if config.eval_every_steps >= 0:
            last_eval = _evaluate(run, state, step)
    return {"step": step, "train": last_train, "eval": last_eval, "state": state}


def _evaluate(run: _Run, state: TrainState, step: int) -> dict[str, float]:
    from resnet_jax.data import grain_pipeline

    config = run.config
    batches = grain_pipeline.eval_iterator(
        config.data, global_batch_size=config.eval_batch_size, cache_dir=run.workdir
    )
    result = evaluate(
        run.eval_fn,
        state,
        batches,
        run.parallel,
        local_batch_size=config.eval_batch_size // jax.process_count(),
        max_steps=config.num_eval_steps,
    )
    result["epoch"] = step / run.steps_per_epoch
    run.writer.write("eval", step, result)
    run.progress.message(
        f"eval @ step {step}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  "
        f"loss {result['loss']:.4f}  ({int(result['count'])} images)"
    )
    return result


def _check_finite(run: _Run, window: _Window) -> None:
    """With ``nonfinite='stop'``, raises for the first non-finite step since the last check."""
    if run.config.nonfinite != "stop":
        return
    bad = window.first_nonfinite(run.parallel)
    if bad is not None:
        last = None
        if run.ckpt is not None:
            run.ckpt.wait()
            last = run.ckpt.latest_step()
        raise faults.NonFiniteError(bad, last, run.ckpt.directory if run.ckpt else None)


def _save(run: _Run, state: TrainState, step: int) -> None:
    """Starts an asynchronous save of the state; the data position is (seed, step, batch)."""
    config = run.config
    data = {"seed": config.seed, "step": step, "global_batch_size": config.batch_size}
    from resnet_jax.data import grain_pipeline

    data["input"] = grain_pipeline.state_after(run.train_iter, step)  # Grain's position.
    meta = {**run.meta, "step": step, "data": data}
    run.ckpt.save(step, run.parallel.unreplicate(state), meta)


class _Window:
    """Train metrics summed on device between log steps (no host sync per step)."""

    def __init__(self) -> None:
        self.sums: Any = None
        self.first: Any = None  # Smallest non-finite step number (steps.NO_STEP if none).
        self.timed_steps = 0
        self.start = time.perf_counter()

    def add(self, metrics: dict[str, jax.Array]) -> None:
        metrics = dict(metrics)
        first = metrics.pop("first_nonfinite")
        self.first = first if self.first is None else jnp.minimum(self.first, first)
        self.sums = metrics if self.sums is None else jax.tree.map(jnp.add, self.sums, metrics)
        self.timed_steps += 1

    def first_nonfinite(self, parallel: par.DataParallel) -> int | None:
        """The first step since the last summary whose loss or gradients were not finite."""
        if self.first is None:
            return None
        first = int(jax.device_get(parallel.unreplicate(self.first)))
        return None if first == steps.NO_STEP else first

    def restart_clock(self) -> float:
        """Starts timing anew (after compile or eval); returns the seconds since the last."""
        now = time.perf_counter()
        elapsed, self.start, self.timed_steps = now - self.start, now, 0
        return elapsed

    def summary(self, parallel: par.DataParallel, batch_size: int) -> dict[str, float]:
        """Means since the last summary, plus images/s and step time; resets the window."""
        host = jax.device_get(parallel.unreplicate(self.sums))
        elapsed = time.perf_counter() - self.start
        skipped = int(host.pop("nonfinite"))
        out = steps.mean_metrics(host)
        out.pop("count")
        if skipped:
            out["nonfinite_steps"] = skipped
            logging.warning("Skipped %d step(s) with a non-finite loss or gradients.", skipped)
        if self.timed_steps:  # Windows holding only the compile step have no timing.
            out["step_time"] = elapsed / self.timed_steps
            out["images_per_sec"] = batch_size / out["step_time"]
        self.sums = self.first = None
        self.restart_clock()
        return out
