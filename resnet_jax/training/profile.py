"""``config.profile_steps='first:last'``: a ``jax.profiler`` trace of those training steps.

The trace goes to ``<workdir>/profile/plugins/profile/<run>/<host>.xplane.pb`` (one file per
host), which TensorBoard's profile plugin and XProf open: ``xprof --logdir=<workdir>/profile``
or ``tensorboard --logdir=<workdir>/profile``. Profiling changes no number of the run.
"""

from __future__ import annotations

from typing import Any

import jax
from etils import epath

PROFILE_DIR = "profile"


def parse_steps(text: str) -> tuple[int, int] | None:
    """'first:last' (inclusive, steps counted from 1) -> (first, last); '' -> None.

    Raises ValueError with the expected form for anything else.
    """
    if not text:
        return None
    parts = str(text).split(":")
    try:
        first, last = (int(parts[0]), int(parts[-1])) if len(parts) <= 2 else (0, -1)
    except ValueError:
        first, last = 0, -1
    if first < 1 or last < first:
        raise ValueError(
            f"profile_steps={text!r} is not 'first:last' with 1 <= first <= last (e.g. '10:15', "
            "or '12' for one step); '' turns profiling off."
        )
    return first, last


class StepProfiler:
    """Starts a trace before step ``first`` and stops it after step ``last`` has run."""

    def __init__(self, steps: str, workdir: str | epath.Path) -> None:
        self.span = parse_steps(steps)
        self.logdir = epath.Path(workdir) / PROFILE_DIR
        self.active = False
        self.done = False  # One trace per run.

    def before(self, step: int) -> None:
        """Starts at ``first``, or at the first step of a run resumed inside the span."""
        if self.span is not None and not self.done and self.span[0] <= step <= self.span[1]:
            jax.profiler.start_trace(str(self.logdir))
            self.active = self.done = True

    def after(self, step: int, outputs: Any) -> None:
        if self.active and step >= self.span[1]:
            jax.block_until_ready(outputs)  # The traced steps' device work, not only dispatch.
            self.stop()

    def stop(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
