"""What ends a run early on purpose: preemption (SIGTERM) and a non-finite loss or gradient.

Preemption: a SIGTERM sets a flag; at a step boundary every process learns whether any
process was told to stop (a max over processes, every ``check_every`` steps on multi-host,
every step on one host), so all of them save the same step and exit together with
``PREEMPTED_EXIT_CODE``. Rerunning the same command resumes from that checkpoint.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import jax
import numpy as np
from absl import logging

# EX_TEMPFAIL (sysexits.h): "temporary failure, try again". Distinct from 143 (killed by
# SIGTERM before a checkpoint could be saved) so a wrapper can tell the two apart.
PREEMPTED_EXIT_CODE = 75


class Preempted(Exception):
    """The run stopped at ``step`` after a SIGTERM and saved a checkpoint there; rerun to resume."""

    def __init__(self, step: int, checkpoint_dir: str | None) -> None:
        where = f"saved in {checkpoint_dir}" if checkpoint_dir else "no checkpointing configured"
        super().__init__(
            f"Preempted (SIGTERM): stopped at step {step} ({where}). Rerun the same command to "
            "resume from there."
        )
        self.step = step
        self.checkpoint_dir = checkpoint_dir


class NonFiniteError(FloatingPointError):
    """The loss or the gradients became NaN/inf; the state of that step was not saved."""

    def __init__(self, step: int, last_checkpoint: int | None, checkpoint_dir: str | None) -> None:
        kept = (
            f"The last good checkpoint, step {last_checkpoint} in {checkpoint_dir}, is kept."
            if last_checkpoint is not None
            else "No checkpoint was written before it."
        )
        super().__init__(
            f"Non-finite loss or gradients at step {step}: training stopped and that state was "
            f"not saved. {kept} Lower optimizer.base_learning_rate, set optimizer.grad_clip_norm, "
            "or set --config.nonfinite=skip to skip such steps (keeping the previous state)."
        )
        self.step = step


class PreemptionWatcher:
    """Catches SIGTERM while active (a context manager) and says when all processes should stop.

    ``should_stop(step)`` must be called at every step by every process: it is collective on
    multi-host runs at every ``check_every``-th step.
    """

    def __init__(self, check_every: int = 1) -> None:
        self.check_every = max(1, int(check_every))
        self.requested = False
        self._previous: Any = None
        self._installed = False

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if not self.requested:
            logging.warning(
                "Signal %d received: saving a checkpoint at the next step boundary, then exiting.",
                signum,
            )
        self.requested = True

    def install(self) -> None:
        """(Re)installs the handler: ``jax.distributed.initialize`` replaces it with its own."""
        if threading.current_thread() is not threading.main_thread():
            return  # Signal handlers can only be set from the main thread.
        previous = signal.signal(signal.SIGTERM, self._handle)
        if not self._installed:
            self._previous = previous
            self._installed = True

    def __enter__(self) -> PreemptionWatcher:
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGTERM, previous)
            self._installed = False

    def should_stop(self, step: int) -> bool:
        """True on every process at the same step once any process received SIGTERM."""
        if jax.process_count() == 1:
            return self.requested
        if step % self.check_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))
