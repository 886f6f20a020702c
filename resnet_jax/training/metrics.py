"""Where metrics go: JSON lines, TensorBoard event files and a one-line console progress bar.

The TensorBoard writer emits event records with the protos shipped by the ``tensorboard``
package, so logging needs neither TensorFlow nor a TF import on accelerator images.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from typing import Any, TextIO

from absl import logging

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(workdir: str) -> list[dict[str, Any]]:
    """All rows of ``workdir/metrics.jsonl`` (train and eval), in the order written."""
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class TensorBoardWriter:
    """Scalar summaries in an ``events.out.tfevents.*`` file, readable by TensorBoard."""

    def __init__(self, logdir: str) -> None:
        from tensorboard.compat.proto import event_pb2, summary_pb2
        from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

        self._event_pb2, self._summary_pb2, self._crc = event_pb2, summary_pb2, masked_crc32c
        os.makedirs(logdir, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self._file = open(os.path.join(logdir, name), "ab")
        self._write(self._event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event: Any) -> None:
        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", self._crc(header)))
        self._file.write(data + struct.pack("<I", self._crc(data)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = self._summary_pb2.Summary(
            value=[
                self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                for k, v in values.items()
            ]
        )
        self._write(self._event_pb2.Event(wall_time=time.time(), step=int(step), summary=summary))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def drop_rows_after(workdir: str, step: int) -> int:
    """Removes the rows of ``metrics.jsonl`` past ``step`` (and damaged lines); returns how many.

    A run resumed from the checkpoint of ``step`` redoes the steps after it: their rows from the
    attempt that did not reach a checkpoint go, so that each (split, step) appears once. The
    rows kept are left byte for byte; the file is replaced atomically (temp file, rename).
    """
    path = os.path.join(workdir, METRICS_FILE)
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = [line for line in lines if line.strip() and _step_of(line) <= step]
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if not dropped:
        return 0
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.writelines(kept)
    os.replace(tmp, path)
    return dropped


def _step_of(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):  # Cut short by a kill mid-write.
        return math.inf


class MetricWriter:
    """Appends rows to ``metrics.jsonl`` and TensorBoard; a no-op on non-zero processes.

    ``resume_step``: the run continues from that step's checkpoint; rows past it are dropped
    first (see ``drop_rows_after``), and a (split, step) already recorded is not written again
    (a rerun of a finished run evaluates its last step again).
    """

    def __init__(
        self,
        workdir: str,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int = 0,
    ) -> None:
        self.enabled = enabled
        self._jsonl: TextIO | None = None
        self._tb: TensorBoardWriter | None = None
        self._recorded: set[tuple[str, int]] = set()
        if not enabled:
            return
        os.makedirs(workdir, exist_ok=True)
        dropped = drop_rows_after(workdir, resume_step)
        if dropped:
            logging.warning(
                "Dropped %d row(s) past step %d from %s: the steps after the checkpoint the "
                "run resumes from are trained again.",
                dropped,
                resume_step,
                METRICS_FILE,
            )
        self._recorded = {(r["split"], int(r["step"])) for r in read_metrics(workdir)}
        self._jsonl = open(os.path.join(workdir, METRICS_FILE), "a")
        if tensorboard:
            try:
                self._tb = TensorBoardWriter(os.path.join(workdir, TENSORBOARD_DIR))
            except ImportError:  # tensorboard not installed: JSON lines only.
                self._tb = None

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        """One row: ``{'split', 'step', **values}``; TensorBoard tags are ``split/name``."""
        if not self.enabled or (split, int(step)) in self._recorded:
            return
        self._recorded.add((split, int(step)))
        row = {"split": split, "step": int(step)}
        row.update({k: _plain(v) for k, v in values.items()})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            numeric = {f"{split}/{k}": v for k, v in row.items() if k not in ("split", "step")}
            self._tb.scalars(step, {k: v for k, v in numeric.items() if isinstance(v, float)})

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


def _plain(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


class ProgressBar:
    """``step/total [#####.....] loss top1 img/s ETA`` on one console line.

    Redraws in place on a terminal; elsewhere (CI logs) prints one line per update.
    """

    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.interactive = bool(getattr(self.stream, "isatty", lambda: False)())
        self._width = 0

    def update(self, step: int, *, eta_s: float | None = None, **fields: float) -> None:
        if not self.enabled:
            return
        frac = min(step / max(self.total, 1), 1.0)
        bar = "#" * int(20 * frac) + "." * (20 - int(20 * frac))
        parts = [f"{step}/{self.total} [{bar}]"]
        parts += [f"{k} {_fmt(v)}" for k, v in fields.items()]
        if eta_s is not None and math.isfinite(eta_s):
            parts.append(f"ETA {_duration(eta_s)}")
        line = "  ".join(parts)
        if self.interactive:
            pad = max(self._width - len(line), 0)
            self.stream.write("\r" + line + " " * pad)
            self._width = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        """A line of its own (an eval result) without breaking the bar."""
        if not self.enabled:
            return
        if self.interactive and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.interactive and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0


def _fmt(v: float) -> str:
    if isinstance(v, int):
        return str(v)
    return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
