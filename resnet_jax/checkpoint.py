"""Checkpoints with orbax: asynchronous saves, keep the last N, resume from the latest.

Each step directory holds two items: ``state`` (the TrainState pytree: params, BN
statistics, optimizer state, step, RNG key) and ``meta`` (JSON: config, model name and
architecture fingerprint, data position). The data position is the step and the data seed:
the input pipeline replays the stream from there, so a resumed run continues exactly.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

STATE, META = "state", "meta"


def architecture_fingerprint(params: Any) -> str:
    """Short hash of every parameter's path, shape and dtype: equal iff the nets are alike."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    desc = [(jax.tree_util.keystr(p), tuple(np.shape(x)), str(x.dtype)) for p, x in leaves]
    return hashlib.sha256(json.dumps(desc).encode()).hexdigest()[:16]


class CheckpointError(RuntimeError):
    """A checkpoint in the workdir cannot continue the configured run."""


class Checkpointer:
    """An orbax ``CheckpointManager`` on ``directory`` with state + metadata items."""

    def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True) -> None:
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, enable_async_checkpointing=async_save, create=True
        )
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=(STATE, META)
        )

    def latest_step(self) -> int | None:
        """The newest finished checkpoint's step, or None."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        """Steps of the finished checkpoints on disk, oldest first."""
        return list(self.manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], *, force: bool = True) -> bool:
        """Starts an asynchronous save; returns at once while the write continues."""
        args = ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
        )
        return self.manager.save(step, args=args, force=force)

    def read_meta(self, step: int | None = None) -> dict[str, Any] | None:
        """The JSON metadata of ``step`` (default: latest), or None without checkpoints."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        restored = self.manager.restore(
            step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()})
        )
        return dict(restored[META])

    def restore(self, target: Any, step: int | None = None) -> tuple[Any, dict[str, Any]]:
        """Restores ``step`` (default: latest) into the structure, dtypes and shardings of
        ``target`` (arrays or ``jax.ShapeDtypeStruct``s)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise CheckpointError(f"No checkpoint in {self.directory}.")
        abstract = jax.tree.map(_abstract, target)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                **{STATE: ocp.args.StandardRestore(abstract), META: ocp.args.JsonRestore()}
            ),
        )
        return restored[STATE], dict(restored[META])

    def reached_preemption(self, step: int) -> bool:
        """True once the job was told to stop (e.g. TPU maintenance): save now, then exit."""
        return self.manager.reached_preemption(step)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads."""
        self.manager.wait_until_finished()
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
