"""``train_and_evaluate(config, workdir)``: the training loop and everything at its edges.

Order of work: resolve the config into the run's spec (checks, no compile; the dataset's
counts), build mesh, model and optimizer through ``resnet_jax.build``, check that the workdir
holds this run or none (before writing anything there, then the spec is its config.json),
initialise or resume from its latest checkpoint, then train with periodic logging, evaluation
and asynchronous checkpoints; finally plot the curves.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from resnet_jax import build as builder
from resnet_jax import parallel as par
from resnet_jax import spec as run_spec
from resnet_jax import storage
from resnet_jax.checkpoint import Checkpointer, architecture_fingerprint
from resnet_jax.data import grain_pipeline
from resnet_jax.training import compile_cache, confusion, faults, finetune, steps, validate
from resnet_jax.training import workdir as workdirs
from resnet_jax.training.evaluate import eval_sums
from resnet_jax.training.metrics import MetricWriter, ProgressBar
from resnet_jax.training.plot import plot_curves
from resnet_jax.training.profile import StepProfiler
from resnet_jax.training.state import TrainState, create_train_state


@dataclasses.dataclass
class _Run:
    """Everything one run builds before its first step."""

    spec: run_spec.RunSpec
    config: ml_collections.FrozenConfigDict  # spec.config
    workdir: storage.epath.Path
    parallel: par.DataParallel
    built: builder.Built  # The model as trained (frozen stages): the confusion matrix's too.
    train_fn: Callable
    eval_fn: Callable
    state: TrainState
    meta: dict[str, Any]
    ckpt: Checkpointer | None
    writer: MetricWriter
    progress: ProgressBar
    profiler: StepProfiler
    input_state: dict[str, Any] | None = None  # The restored checkpoint's input position.
    train_iter: Any = None  # Its state goes into each checkpoint's metadata.


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: storage.PathLike
) -> dict[str, Any]:
    """Trains and evaluates as ``config`` says; returns the last train and eval metrics.

    Raises ``faults.Preempted`` after a SIGTERM or Ctrl-C (a checkpoint of the stop step is on disk)
    and ``faults.NonFiniteError`` when the loss or gradients stop being finite.
    """
    workdir = storage.path(workdir)
    with faults.PreemptionWatcher(config.preemption_check_every_steps) as watcher:
        run = _setup(config, workdir)
        watcher.install()  # jax.distributed.initialize() may have put its own handler there.
        try:
            result = _train(run, watcher)
            result["confusion"] = confusion.write_final(run, result)
        finally:
            grain_pipeline.close(run.train_iter)
            run.profiler.stop()
            run.progress.close()
            if run.ckpt is not None:
                run.ckpt.close()  # Waits for the asynchronous saves.
            run.writer.close()
    if run.config.plot and jax.process_index() == 0:
        run.progress.message(f"Curves: {plot_curves(workdir)}")
    return result


def _setup(config: ml_collections.ConfigDict, workdir: storage.epath.Path) -> _Run:
    try:
        par.init_distributed(config.multihost)
    except ValueError as e:
        raise validate.ConfigError(str(e)) from e
    devices = jax.devices()
    validate.check_workdir(workdir)
    spec = run_spec.resolve(
        config, num_devices=len(devices), process_count=jax.process_count(), cache_dir=workdir
    )
    config = spec.config
    parallel = par.create_data_parallel(config.parallelism, bn_group_size=config.bn_group_size)
    built = builder.build(spec, parallel)
    source = finetune.load_source(config, built.model)
    size = config.data.image_size
    state = create_train_state(
        built.model,
        built.tx,
        seed=config.seed,
        image_shape=(size, size, 3),
        ema=built.ema_decay is not None,
    )
    fingerprint = architecture_fingerprint(state.params)
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    state = parallel.replicate(state)

    # Nothing in the workdir is written before it is known to hold this run (or none).
    state, start_step, ckpt, input_state = workdirs.resume(
        config, workdir, state, parallel, fingerprint
    )
    state = finetune.initialize(config, state, parallel, source)
    is_main = jax.process_index() == 0
    if is_main:
        workdirs.write_record(workdir, spec)

    compile_cache.enable(config.compilation_cache_dir)
    train_fn = steps.compile_train_step(
        parallel,
        model=built.model,
        tx=built.tx,
        loss_fn=built.loss_fn,
        augment_fn=built.augment_fn,
        ema_decay=built.ema_decay,
        skip_nonfinite=config.nonfinite == "skip",
        preset=built.preset,
    )
    eval_fn = steps.compile_eval_step(
        parallel,
        model=built.model,
        preset=built.preset,
        compiler_options=built.backend.forward_options,
    )
    progress = ProgressBar(spec.total_steps, enabled=is_main and config.progress_bar)
    progress.message(
        f"{config.model.name} ({num_params:,} params, {config.dtype}) on {config.data.dataset} "
        f"({spec.num_train} train / {spec.num_eval} eval images, {spec.num_classes} classes): "
        f"{spec.total_steps} steps of {config.batch_size} on {parallel.num_devices} "
        f"{devices[0].platform} device(s) with {parallel.mode}. Workdir: {workdir}"
    )
    meta = {
        "model_name": config.model.name,
        "architecture": fingerprint,
        "num_classes": spec.num_classes,
        "class_names": list(spec.class_names) if spec.class_names else None,
        "config": workdirs.as_recorded(config),
    }
    return _Run(
        spec=spec,
        config=config,
        workdir=workdir,
        parallel=parallel,
        built=built,
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
        input_state=input_state,
    )


def _train(run: _Run, watcher: faults.PreemptionWatcher) -> dict[str, Any]:
    config, parallel, progress = run.config, run.parallel, run.progress
    state = run.state
    run.state = None  # Donated to the first step; keep no stale reference.
    start_step = int(jax.device_get(parallel.unreplicate(state).step))
    if start_step:
        progress.message(f"Resuming from the checkpoint at step {start_step}.")
    epoch_steps = run.spec.steps_per_epoch
    eval_every = epoch_steps if config.eval_every_steps == 0 else config.eval_every_steps
    ckpt_every = config.checkpoint_every_steps or epoch_steps
    log_every = max(config.log_every_steps, 1)

    run.train_iter = train_iter = grain_pipeline.train_iterator(
        config.data, global_batch_size=config.batch_size, seed=config.seed, start_step=start_step,
        state=run.input_state, cache_dir=run.workdir,
    )  # fmt: skip
    batches = par.prefetch_to_devices(train_iter, parallel, size=config.prefetch_batches)
    last_train: dict[str, float] = {}
    last_eval: dict[str, float] = {}
    window = _Window()
    run_start = time.perf_counter()
    step = start_step
    for step in range(start_step + 1, run.spec.total_steps + 1):
        run.profiler.before(step)
        state, metrics = run.train_fn(state, next(batches))
        run.profiler.after(step, (state, metrics))
        window.add(metrics)
        if step == start_step + 1:  # Keep the compile out of the throughput numbers.
            jax.block_until_ready(metrics)
            logging.info("First step (compile + run): %.1f s.", window.restart_clock())
            run_start = time.perf_counter()
        is_last = step == run.spec.total_steps
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
            lr = float(run.built.lr_fn(step - 1))
            last_train.update(epoch=step / epoch_steps, learning_rate=lr)
            run.writer.write("train", step, last_train)
            done = step - start_step - 1
            left = run.spec.total_steps - step
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
    if start_step >= run.spec.total_steps:
        progress.message(f"Nothing to train: the checkpoint is at step {start_step} already.")
        if config.eval_every_steps >= 0:
            last_eval = _evaluate(run, state, step)
    return {"step": step, "train": last_train, "eval": last_eval, "state": state}


def _evaluate(run: _Run, state: TrainState, step: int) -> dict[str, float]:
    result = steps.mean_metrics(
        eval_sums(run.spec, run.eval_fn, state, run.parallel, cache_dir=run.workdir)
    )
    result["epoch"] = step / run.spec.steps_per_epoch
    run.writer.write("eval", step, result)
    ema = f"  EMA top-1 {result['ema_top1']:.4f}" if "ema_top1" in result else ""
    run.progress.message(
        f"eval @ step {step}: top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  "
        f"loss {result['loss']:.4f}{ema}  ({int(result['count'])} images)"
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
