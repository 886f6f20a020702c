"""Whether a workdir can continue the configured run, checked before anything in it is written.

A workdir belongs to one run: its checkpoints (their architecture and the config they record)
or, without checkpoints, its ``config.json``. Another model stops the run; so does a config that
changes the run's result (schedule, batch size, data, ...) unless ``allow_config_change`` says
to continue the state under the new config. Fields that only change how the run is watched or
stored (``FREE_FIELDS``) may change on every resume.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from resnet_jax import parallel as par
from resnet_jax import storage
from resnet_jax.checkpoint import Checkpointer, CheckpointError, check_compatible
from resnet_jax.training.state import TrainState
from resnet_jax.training.validate import ConfigError

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
OPT_IN = "allow_config_change"
# Config fields that do not change the trained state: logging, evaluation, checkpointing,
# fault handling, input speed, and exact reparametrisations of the same computation.
FREE_FIELDS = frozenset(
    {
        OPT_IN,
        "log_every_steps",
        "eval_every_steps",
        "num_eval_steps",
        "eval_batch_size",
        "checkpoint_every_steps",
        "keep_checkpoints",
        "async_checkpointing",
        "restore_fallback",
        "preemption_check_every_steps",
        "prefetch_batches",
        "progress_bar",
        "tensorboard",
        "plot",
        "confusion_matrix_max_classes",
        "compilation_cache_dir",
        "profile_steps",
        "parallelism",
        "multihost",
        "backend",
        "model.remat",
        "model.space_to_depth",
        "data.data_dir",
        "data.manual_dir",
        "data.download",
        "data.folder_check",
        "data.cache",
        "data.num_parallel_calls",
        "data.prefetch",
        "data.private_threads",
        "data.workers",  # Grain's batches do not depend on how many processes decode them.
    }
)


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def as_recorded(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as config.json and checkpoint metadata record it (JSON: tuples as lists)."""
    return json.loads(config.to_json_best_effort())


# Fields added after runs were first recorded whose default changed what such a run does:
# the value those runs had. (Before data.pipeline existed every run read its data by tf.data.)
RECORDED_BEFORE = {"data.pipeline": "tfdata"}


def changed_fields(recorded: dict[str, Any], config: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(field, recorded value, configured value) for each field outside ``FREE_FIELDS`` that
    differs; other fields that only one side has (another version's config) are not compared."""
    old, new = _flatten(recorded), _flatten(config)
    if "data" in recorded:
        old = {**RECORDED_BEFORE, **old}
    return [
        (k, old[k], new[k])
        for k in sorted(old.keys() & new.keys())
        if k not in FREE_FIELDS and old[k] != new[k]
    ]


def check_unchanged(
    recorded: dict[str, Any], config: ml_collections.ConfigDict, *, where: str
) -> None:
    """Raises ConfigError naming every field of ``config`` that differs from the recorded run's
    (``where`` says what recorded it), unless ``allow_config_change`` is set."""
    changes = changed_fields(recorded, as_recorded(config))
    if not changes:
        return
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, old, new in changes)
    if config.get(OPT_IN, False):
        logging.warning("Continuing the run in %s under a changed config: %s.", where, listed)
        return
    raise ConfigError(
        f"The run in {where} was made with another config: {listed}. Continuing it under these "
        "values would give neither run's result. Use a new --workdir to start a run with them, "
        f"rerun with the recorded values, or set --config.{OPT_IN}=True to continue this run's "
        "state under the new config (e.g. to train for more epochs); nothing was changed."
    )


def write_record(workdir: storage.PathLike, spec: Any) -> None:
    """Writes the run's resolved spec (a RunSpec) as ``config.json``: every config field as
    earlier runs recorded them, plus its derived numbers under 'derived'."""
    workdir = storage.path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / CONFIG_FILE).write_text(json.dumps(spec.record(), indent=2, sort_keys=True) + "\n")


def read_recorded_config(workdir: storage.PathLike) -> dict[str, Any] | None:
    """The config.json of an earlier run in ``workdir``, or None."""
    path = storage.path(workdir) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is not readable JSON ({e}): it records the run in this workdir. Restore "
            "it, or use a new --workdir; nothing was changed."
        ) from None


def check_recorded_model(
    recorded: dict[str, Any], config: ml_collections.ConfigDict, *, where: str
) -> None:
    """Refuses a workdir whose config.json names another architecture (name or kwargs)."""
    old = recorded.get("model", {})
    new = as_recorded(config)["model"]
    if (old.get("name"), old.get("kwargs", {})) != (new["name"], new.get("kwargs", {})):
        raise CheckpointError(
            f"The run in {where} is of model {old.get('name')!r} (kwargs {old.get('kwargs')}), "
            f"but the config asks for {new['name']!r} (kwargs {new.get('kwargs')}). Use a new "
            "--workdir, or the config that made this run; nothing was changed."
        )


def resume(
    config: ml_collections.ConfigDict,
    workdir: storage.PathLike,
    state: TrainState,
    parallel: par.DataParallel,
    fingerprint: str,
) -> tuple[TrainState, int, Checkpointer | None, dict[str, Any] | None]:
    """(state, its step, the checkpointer to save with or None, the input pipeline's recorded
    position or None) for a run in ``workdir``.

    Restores the latest readable checkpoint (also with ``keep_checkpoints=0``, which only stops
    saving) after checking that it is of this architecture and config; without checkpoints,
    checks config.json. A refusal leaves every file in the workdir as it was.
    """
    directory = storage.path(workdir) / CHECKPOINT_DIR
    keep = config.keep_checkpoints
    found, meta = None, {}
    # Opening a Checkpointer is a collective, so every process must take the same branch: process
    # 0's view decides (it may create the directory while another process is still looking).
    exists = directory.is_dir()
    if jax.process_count() > 1:
        exists = bool(multihost_utils.broadcast_one_to_all(np.asarray(exists)))
    if exists:
        reader = Checkpointer(directory, async_save=False)
        try:
            found, meta = _restore(reader, state, parallel, config, fingerprint)
        finally:
            reader.close()
    if found is None:
        recorded = read_recorded_config(workdir)
        if recorded is not None:
            where = str(storage.path(workdir) / CONFIG_FILE)
            check_recorded_model(recorded, config, where=where)
            check_unchanged(recorded, config, where=where)
    else:
        state = parallel.replicate(found)
    step = int(jax.device_get(found.step)) if found is not None else 0
    position = meta.get("data", {}).get("input")
    if keep <= 0 and found is None:
        return state, step, None, position
    # Unfinished writes are removed only now: the workdir is known to hold this run's checkpoints.
    ckpt = Checkpointer(
        directory,
        keep=max(keep, 1),
        async_save=config.async_checkpointing,
        remove_partial=found is not None,
    )
    if keep <= 0:  # It saves nothing; opening it removed the unfinished writes.
        ckpt.close()
        ckpt = None
    return state, step, ckpt, position


def _restore(
    ckpt: Checkpointer,
    state: TrainState,
    parallel: par.DataParallel,
    config: ml_collections.ConfigDict,
    fingerprint: str,
) -> tuple[TrainState | None, dict[str, Any]]:
    """The latest readable checkpoint in ``state``'s layout (unreplicated) and its metadata,
    or (None, {}).

    A checkpoint of another architecture or config stops the run before anything changes; an
    unreadable one too, unless ``config.restore_fallback`` allows an older one.
    """

    def check(meta: dict[str, Any]) -> None:
        check_compatible(
            meta, model_name=config.model.name, fingerprint=fingerprint, where=ckpt.directory
        )
        where = f"{ckpt.directory} (step {meta.get('step')})"
        if config.ema_decay > 0 and not meta.get("config", {}).get("ema_decay"):
            raise ConfigError(
                f"ema_decay={config.ema_decay} asks for a weight EMA, but the checkpoints in "
                f"{where} were written without one (ema_decay=0), so there is none to resume. "
                "Rerun with --config.ema_decay=0 to continue this run, or use a new --workdir "
                "to train with an EMA from the start; nothing was changed."
            )
        if not config.ema_decay and meta.get("config", {}).get("ema_decay"):
            raise ConfigError(
                f"ema_decay=0, but the checkpoints in {where} hold a weight EMA (ema_decay="
                f"{meta['config']['ema_decay']}): rerun with that ema_decay to continue this "
                "run, or use a new --workdir to train without one; nothing was changed."
            )
        check_unchanged(meta.get("config", {}), config, where=where)
        data = meta.get("data", {})
        if data.get("seed") != config.seed or data.get("global_batch_size") != config.batch_size:
            logging.warning(  # Only with allow_config_change: both are checked above.
                "Resuming with seed %s and batch size %s, but the checkpoint was written with %s "
                "and %s: the data order differs from an uninterrupted run.",
                config.seed,
                config.batch_size,
                data.get("seed"),
                data.get("global_batch_size"),
            )

    found = ckpt.restore_latest(
        parallel.unreplicate(state), fallback=config.restore_fallback, check_meta=check
    )
    return (None, {}) if found is None else found
