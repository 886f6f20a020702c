"""Checkpoints with orbax: asynchronous saves, keep the last N, resume from the latest.

Each step directory holds two items: ``state`` (the TrainState pytree: params, BN
statistics, optimizer state, step, RNG key) and ``meta`` (JSON: config, model name and
architecture fingerprint, data position). The data position is the step and the data seed:
the input pipeline replays the stream from there, so a resumed run continues exactly.

A save is atomic: orbax writes into ``<step>.orbax-checkpoint-tmp-*`` and renames it when
complete, so a killed writer leaves only a temporary directory, which restores ignore and
orbax deletes when asked to (``remove_partial``). On gs:// (no renames) orbax writes ``<step>``
in place and marks it complete with ``commit_success.txt``; an unmarked one is ignored alike.
``meta`` also records a checksum of the state's bits; a restore that reads other bits, or cannot
read the files at all, raises ``CheckpointReadError``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax import lax

from resnet_jax import storage

STATE, META = "state", "meta"
CHECKSUM = "_checksum"  # Key in the stored meta; removed from what restores return.
SET_ASIDE_SUFFIX = ".unreadable"


def architecture_fingerprint(params: Any) -> str:
    """Short hash of every parameter's path, shape and dtype: equal iff the nets are alike."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    desc = [(jax.tree_util.keystr(p), tuple(np.shape(x)), str(x.dtype)) for p, x in leaves]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


def _leaf_bits_sum(x: jax.Array) -> jax.Array:
    """Position-weighted sum (mod 2**32) of an array's bit patterns: exact and order-free."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    size = jnp.dtype(x.dtype).itemsize
    if x.dtype == jnp.bool_ or size == 1:
        bits = x.astype(jnp.uint32)
    else:
        bits = lax.bitcast_convert_type(x, {2: jnp.uint16, 4: jnp.uint32}[size])
        bits = bits.astype(jnp.uint32)
    bits = bits.ravel()
    weights = jnp.arange(bits.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
    return jnp.sum(bits * weights, dtype=jnp.uint32)


@jax.jit
def _bits_sums(leaves: list[Any]) -> jax.Array:
    return jnp.stack([_leaf_bits_sum(x) for x in leaves] or [jnp.uint32(0)])


def state_checksum(tree: Any) -> str:
    """A hex digest of every leaf's exact bits, computed on device (only scalars come back).

    Equal on every process for replicated state; used to verify restores and multi-host runs.
    """
    leaves = jax.tree.leaves(tree)
    sums = np.asarray(jax.device_get(_bits_sums(leaves)))
    desc = [(tuple(np.shape(x)), str(x.dtype)) for x in leaves]
    return hashlib.sha256(sums.tobytes() + json.dumps(desc).encode()).hexdigest()[:16]


class CheckpointError(RuntimeError):
    """A checkpoint in the workdir cannot continue the configured run."""


class CheckpointReadError(CheckpointError):
    """A checkpoint's files cannot be read back (damaged, truncated) or hold other bits."""

    def __init__(
        self, step: int, directory: storage.PathLike, cause: str, previous: int | None
    ) -> None:
        hint = (
            f" If its files are damaged, set --config.restore_fallback=True to resume from the "
            f"previous checkpoint (step {previous}); the unreadable one is then renamed to "
            f"{step}{SET_ASIDE_SUFFIX}, not deleted."
            if previous is not None
            else " There is no older checkpoint to fall back to; use a new --workdir to start over."
        )
        super().__init__(
            f"The checkpoint of step {step} in {directory} cannot be read: {cause}.{hint} If the "
            "config changed the optimizer or the state's layout, rerun with the config that "
            "wrote it (config.json in the workdir)."
        )
        self.step = step


class Checkpointer:
    """An orbax ``CheckpointManager`` on ``directory`` with state + metadata items.

    ``remove_partial``: orbax deletes the temporary directories of saves that never completed
    as it opens ``directory`` (on process 0); only for a workdir known to be this run's.
    """

    def __init__(
        self,
        directory: storage.PathLike,
        *,
        keep: int = 3,
        async_save: bool = True,
        remove_partial: bool = False,
    ) -> None:
        self.directory = storage.path(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep,
            enable_async_checkpointing=async_save,
            create=True,
            cleanup_tmp_directories=remove_partial,
        )
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=options,
            item_handlers={
                STATE: ocp.StandardCheckpointHandler(),
                META: ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the finished checkpoints on disk, oldest first."""
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any]) -> bool:
        """Starts an asynchronous save; returns at once while the write continues."""
        meta = {**meta, CHECKSUM: state_checksum(state)}
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
        )
        return self.manager.save(step, args=args, force=True)

    def state_metadata(self, step: int) -> dict[str, Any]:
        """The saved state's tree of shapes and dtypes, read without restoring it."""
        return dict(self.manager.item_metadata(step)[STATE].tree)

    def read_meta(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON metadata of ``step`` (default: latest), or None without checkpoints."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        try:
            restored = self.manager.restore(
                step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()})
            )
            meta = dict(restored[META])
        except Exception as e:  # orbax/tensorstore raise many types for damaged files.
            raise self._read_error(step, f"its metadata: {type(e).__name__}: {e}") from e
        meta.pop(CHECKSUM, None)
        return meta

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` (default: latest) into the structure, dtypes and shardings of
        ``target`` (arrays or ``jax.ShapeDtypeStruct``s)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No checkpoint in {self.directory}.")
        abstract = jax.tree.map(_abstract, target)
        try:
            absent = self._absent_fields(abstract, step)
            if absent:  # Fields added since (e.g. TrainState.ema), None in the target.
                abstract = {k: v for k, v in vars(abstract).items() if k not in absent}
            restored = self.manager.restore(
                step,
                args=ocp.args.Composite(
                    **{STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()}
                ),
            )
        except Exception as e:  # orbax/tensorstore raise many types for damaged files.
            raise self._read_error(step, f"{type(e).__name__}: {e}") from e
        state, meta = restored[STATE], dict(restored[META])
        if absent:
            state = type(target)(**state, **dict.fromkeys(absent))
        expected = meta.pop(CHECKSUM, None)
        if expected is not None and state_checksum(state) != expected:
            raise self._read_error(step, "its arrays differ from what was saved (checksum)")
        return state, meta

    def _absent_fields(self, abstract: Any, step: int) -> list[str]:
        """Dataclass fields that are None in ``abstract`` and missing from the saved state."""
        if not dataclasses.is_dataclass(abstract):
            return []
        none = [f.name for f in dataclasses.fields(abstract) if getattr(abstract, f.name) is None]
        if not none:
            return []
        return [name for name in none if name not in self.state_metadata(step)]

    def restore_latest(
        self,
        target: Any,
        *,
        fallback: bool = False,
        check_meta: Callable[[dict[str, Any]], None] | None = None,
    ) -> tuple[Any, dict[str, Any]] | None:
        """Restores the newest checkpoint (None without any), after ``check_meta(meta)``.

        An unreadable checkpoint raises ``CheckpointReadError``; with ``fallback`` the next
        older one is tried, and once one restores, the unreadable newer ones are renamed to
        ``<step>.unreadable`` (never deleted) so that the run can write those steps again.
        """
        unreadable = []
        for step in sorted(self.all_steps(), reverse=True):
            try:
                meta = self.read_meta(step)
                if check_meta is not None:
                    check_meta(meta)  # A CheckpointError here is not a reason to fall back.
                state, meta = self.restore(target, step=step)
            except CheckpointReadError as e:
                if not fallback:
                    raise
                logging.warning("%s Falling back to an older checkpoint.", e)
                unreadable.append(step)
                continue
            if unreadable:
                self._set_aside(unreadable)
                logging.warning(
                    "Resumed from step %d; unreadable checkpoints %s were renamed to "
                    "<step>%s in %s.",
                    step,
                    unreadable,
                    SET_ASIDE_SUFFIX,
                    self.directory,
                )
            return state, meta
        if unreadable:
            raise CheckpointError(
                f"No checkpoint in {self.directory} can be read (tried steps {unreadable}); "
                "nothing was renamed or deleted. Use a new --workdir to start over."
            )
        return None

    def _read_error(self, step: int, cause: str) -> CheckpointReadError:
        cause = cause.split(" [tensorstore_spec")[0]  # Drop tensorstore's kilobytes of spec.
        cause = cause if len(cause) <= 500 else cause[:500] + "..."
        older = [s for s in self.all_steps() if s < step]
        return CheckpointReadError(step, self.directory, cause, older[-1] if older else None)

    def _set_aside(self, steps: list[int]) -> None:
        if jax.process_index() == 0:
            for step in steps:
                path = self.directory / str(step)
                path.rename(path.with_name(path.name + SET_ASIDE_SUFFIX))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            multihost_utils.sync_global_devices("resnet_jax.checkpoint.set_aside")
        self.manager.reload()

    def reached_preemption(self, step: int) -> bool:
        """True once the job was told to stop (e.g. TPU maintenance): save now, then exit."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and the removal of unfinished writes; releases the threads."""
        self.manager.wait_until_finished()
        # orbax >= 0.11.32 removes them in a thread that only a save waits for, not close().
        cleanup = getattr(self.manager, "_cleanup_tmp_directory_future", None)
        if cleanup is not None:
            cleanup.result()
        self.manager.close()


def _abstract(x: Any) -> Any:
    if isinstance(x, jax.ShapeDtypeStruct):
        return x
    if isinstance(x, jax.Array):
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    return np.asarray(x)


def check_compatible(
    meta: dict[str, Any], *, model_name: str, fingerprint: str, where: str
) -> None:
    """Refuses to resume a checkpoint of another architecture; nothing is deleted."""
    stored_name = meta.get("model_name")
    stored_fp = meta.get("architecture")
    if stored_name != model_name or stored_fp != fingerprint:
        raise CheckpointError(
            f"The checkpoint in {where} (step {meta.get('step')}) is of model {stored_name!r} "
            f"(architecture {stored_fp}), but the config asks for {model_name!r} (architecture "
            f"{fingerprint}). Use a new --workdir, or the config that made this checkpoint; "
            "nothing was deleted."
        )
