"""What ends a run early on purpose: preemption (SIGTERM), Ctrl-C (SIGINT) and a non-finite loss
or gradient.

Preemption and Ctrl-C: the signal sets a flag; at a step boundary every process learns whether any
process was told to stop (a max over processes, every ``check_every`` steps on multi-host,
every step on one host), so all of them save the same step and exit together with
``PREEMPTED_EXIT_CODE`` (``INTERRUPTED_EXIT_CODE`` after Ctrl-C). Rerunning the same command
resumes from that checkpoint. A second Ctrl-C raises KeyboardInterrupt at once, saving nothing.
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
# 128 + SIGINT, what shells report for a program stopped by Ctrl-C.
INTERRUPTED_EXIT_CODE = 130
_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preempted(Exception):
    """The run stopped at ``step`` after a SIGTERM or Ctrl-C and saved a checkpoint there; rerun
    to resume. ``exit_code`` is what train.py exits with."""

    def __init__(self, step: int, checkpoint_dir: str | None, signum: int = signal.SIGTERM) -> None:
        where = f"saved in {checkpoint_dir}" if checkpoint_dir else "no checkpointing configured"
        what = "Interrupted (Ctrl-C)" if signum == signal.SIGINT else "Preempted (SIGTERM)"
        super().__init__(
            f"{what}: stopped at step {step} ({where}). Rerun the same command to resume from "
            "there."
        )
        self.step = step
        self.checkpoint_dir = checkpoint_dir
        self.exit_code = INTERRUPTED_EXIT_CODE if signum == signal.SIGINT else PREEMPTED_EXIT_CODE


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
    """Catches SIGTERM and SIGINT while active (a context manager) and says when all processes
    should stop; ``signum`` is the first signal this process received.

    ``should_stop(step)`` must be called at every step by every process: it is collective on
    multi-host runs at every ``check_every``-th step.
    """

    def __init__(self, check_every: int = 1) -> None:
        self.check_every = max(1, int(check_every))
        self.requested = False
        self.signum = signal.SIGTERM
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # The second Ctrl-C: stop at once.
            return
        self.requested, self.signum = True, signum
        again = " (Ctrl-C again to quit at once, saving nothing)" if signum == signal.SIGINT else ""
        logging.warning(
            "%s received: saving a checkpoint at the next step boundary, then exiting%s.",
            signal.Signals(signum).name,
            again,
        )

    def install(self) -> None:
        """(Re)installs the handler: ``jax.distributed.initialize`` replaces it with its own."""
        if threading.current_thread() is not threading.main_thread():
            return  # Signal handlers can only be set from the main thread.
        for signum in _SIGNALS:
            previous = signal.signal(signum, self._handle)
            self._previous.setdefault(signum, previous)

    def __enter__(self) -> PreemptionWatcher:
        self.install()
        return self

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def should_stop(self, step: int) -> bool:
        """True on every process at the same step once any process received SIGTERM or SIGINT."""
        if jax.process_count() == 1:
            return self.requested
        if step % self.check_every:
            return False
        from jax.experimental import multihost_utils

        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))
