"""Where metrics go: JSON lines, TensorBoard event files (tensorboardX, no TensorFlow needed)
and a one-line console progress bar (tqdm).
"""

from __future__ import annotations

import io
import json
import math
import os
import sys
from typing import Any, TextIO

from absl import logging
from tqdm import tqdm

from resnet_jax import storage

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
REMOTE_FLUSH_SECONDS = 10  # GCS takes about one write per second to an object.


def read_metrics(workdir: storage.PathLike) -> list[dict[str, Any]]:
    """All rows of ``workdir/metrics.jsonl`` (train and eval), in the order written."""
    path = storage.path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_rows_after(workdir: storage.PathLike, step: int) -> int:
    """Removes the rows of ``metrics.jsonl`` past ``step`` (and damaged lines); returns how many.

    A run resumed from the checkpoint of ``step`` redoes the steps after it: their rows from the
    attempt that did not reach a checkpoint go, so that each (split, step) appears once. The
    rows kept are left byte for byte; the file is replaced whole (``storage.write_atomically``).
    """
    path = storage.path(workdir) / METRICS_FILE
    if not path.exists():
        return 0
    lines = path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and _step_of(line) <= step]
    dropped = sum(1 for line in lines if line.strip()) - len(kept)
    if not dropped:
        return 0
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    storage.write_atomically(path, "".join(kept))
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

    Objects in a gs:// bucket cannot be appended to: there every row rewrites the whole file
    (an upload replaces the object in one piece, so a killed run still leaves whole rows).
    """

    def __init__(
        self,
        workdir: storage.PathLike,
        *,
        enabled: bool = True,
        tensorboard: bool = True,
        resume_step: int = 0,
    ) -> None:
        self.enabled = enabled
        self._jsonl: TextIO | None = None
        self._rows: list[str] | None = None  # On gs://: the file's text, rewritten per row.
        self._tb: Any = None  # A tensorboardX SummaryWriter.
        self._recorded: set[tuple[str, int]] = set()
        if not enabled:
            return
        workdir = storage.path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        dropped = drop_rows_after(workdir, resume_step)
        if dropped:
            logging.warning(
                "Dropped %d row(s) past step %d from %s: the steps after the checkpoint the "
                "run resumes from are trained again.",
                dropped,
                resume_step,
                METRICS_FILE,
            )
        rows = read_metrics(workdir)
        self._recorded = {(r["split"], int(r["step"])) for r in rows}
        self._path = workdir / METRICS_FILE
        if storage.is_remote(workdir):
            self._rows = [json.dumps(r) + "\n" for r in rows]
        else:
            self._jsonl = self._path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter  # Imported when used: it imports torch if found.
            from tensorboardX.record_writer import register_writer_factory

            register_writer_factory("gs", _RemoteEventFiles())
            # events.out.tfevents.<time>.<host>.<pid>, written by a thread that flushes each second.
            self._tb = SummaryWriter(
                os.fspath(workdir / TENSORBOARD_DIR),
                flush_secs=REMOTE_FLUSH_SECONDS if storage.is_remote(workdir) else 1,
                filename_suffix=f".{os.getpid()}",
            )

    def write(self, split: str, step: int, values: dict[str, float]) -> None:
        """One row: ``{'split', 'step', **values}``; TensorBoard tags are ``split/name``."""
        if not self.enabled or (split, int(step)) in self._recorded:
            return
        self._recorded.add((split, int(step)))
        row = {"split": split, "step": int(step)}
        row.update({k: _plain(v) for k, v in values.items()})
        if self._rows is not None:
            self._rows.append(json.dumps(row) + "\n")
            self._path.write_text("".join(self._rows))
        else:
            self._jsonl.write(json.dumps(row) + "\n")
            self._jsonl.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k not in ("split", "step") and isinstance(v, float):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()


class _RemoteEventFile:
    """A TensorBoard event file on gs://, where objects cannot be appended to: each flush that
    follows new records uploads the whole file (through epath, as every other file is)."""

    def __init__(self, path: str) -> None:
        self._path = storage.path(path)
        self._data = io.BytesIO()
        self._uploaded = 0

    def write(self, data: bytes) -> None:
        self._data.write(data)

    def flush(self) -> None:
        if self._data.tell() != self._uploaded:
            self._path.write_bytes(self._data.getvalue())
            self._uploaded = self._data.tell()

    def close(self) -> None:
        self.flush()


class _RemoteEventFiles:
    """tensorboardX's writer factory for gs:// paths (its own needs google-cloud-storage and
    uploads again when garbage-collected, even after the run closed it)."""

    def open(self, path: str) -> _RemoteEventFile:
        return _RemoteEventFile(path)

    def directory_check(self, path: str) -> None:
        pass  # Object stores have no directories to create.


def _plain(v: Any) -> Any:
    try:
        return float(v)
    except (TypeError, ValueError):
        return v


BAR_FORMAT = "{n_fmt}/{total_fmt} [{bar:20}]{postfix}"


class ProgressBar:
    """``step/total [#####.....], loss=.., top1=.., lr=.., img/s=.., ETA=..`` on one line.

    On a terminal tqdm redraws it in place; elsewhere (CI logs, pipes) each update is a line.
    """

    def __init__(self, total: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.total = total
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.interactive = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self._bar = tqdm(
            total=total,
            file=self.stream,
            bar_format=BAR_FORMAT,
            ascii=".#",
            mininterval=0,
            miniters=1,
            dynamic_ncols=True,
            disable=not self.interactive,
        )

    def update(self, step: int, *, eta_s: float | None = None, **fields: float) -> None:
        if not self.enabled:
            return
        values = {k: tqdm.format_num(v) for k, v in fields.items()}
        if eta_s is not None and math.isfinite(eta_s):
            values["ETA"] = tqdm.format_interval(eta_s)
        postfix = ", ".join(f"{k}={v}" for k, v in values.items())
        if self.interactive:
            self._bar.set_postfix_str(postfix, refresh=False)
            self._bar.update(step - self._bar.n)
        else:
            line = tqdm.format_meter(
                step, self.total, 0, ascii=".#", bar_format=BAR_FORMAT, postfix=postfix
            )
            self.message(line)

    def message(self, text: str) -> None:
        """A line of its own (an eval result) above the bar."""
        if self.enabled:
            tqdm.write(text, file=self.stream)
            self.stream.flush()

    def close(self) -> None:
        self._bar.close()
