"""Shared pieces of the harness: the runner protocol, interleaved timed windows, the
description of the machine and software, and peak FLOP/s per device kind.

Every measured thing is a ``Runner``: ``setup()`` builds, compiles and warms up (returning what
it learnt: compile time, FLOPs, memory), ``run(steps)`` runs ``steps`` steps and returns only
once the device has finished them. Timed windows of several runners are interleaved, so that
load changes on a shared machine affect all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, Protocol

PRECISIONS = ("bf16", "fp32")

# Dense peak FLOP/s by device kind substring, first match wins. NVIDIA: SXM datasheet figures
# without sparsity; 'fp32' is IEEE fp32 on the CUDA cores (XLA and cuDNN may run fp32 convs as
# TF32 on tensor cores, so fp32 MFU against this peak can exceed 1). TPU: bf16 MXU peak; fp32
# is left unknown.
PEAK_FLOPS: tuple[tuple[str, dict[str, float]], ...] = (
    ("H200", {"bf16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp32": 67e12}),
    ("A100", {"bf16": 312e12, "fp32": 19.5e12}),
    ("L4", {"bf16": 121e12, "fp32": 30.3e12}),
    ("TPU v6 lite", {"bf16": 918e12}),
    ("TPU v5 lite", {"bf16": 197e12}),
    ("TPU v5", {"bf16": 459e12}),
    ("TPU v4", {"bf16": 275e12}),
    ("TPU v3", {"bf16": 123e12}),
    ("TPU v2", {"bf16": 45e12}),
)


def peak_flops(device_kind: str, precision: str) -> float | None:
    """Peak FLOP/s of one device for ``precision`` ('bf16'/'fp32'); None when unknown (CPUs)."""
    for key, peaks in PEAK_FLOPS:
        if key.lower() in device_kind.lower():
            return peaks.get(precision)
    return None


def mfu(flops_per_step: float | None, step_seconds: float | None, peak: float | None):
    """Model FLOPs utilisation: FLOPs per step / step time / peak; None if any is unknown."""
    if not flops_per_step or not step_seconds or not peak:
        return None
    return flops_per_step / step_seconds / peak


class Runner(Protocol):
    """One measured workload (a framework's train or inference step at a precision)."""

    label: str
    images_per_step: int

    def setup(self) -> dict[str, Any]: ...

    def run(self, steps: int) -> None: ...

    def close(self) -> None: ...


@dataclasses.dataclass
class Timed:
    """The timed windows of one runner and what its setup reported."""

    label: str
    images_per_step: int
    steps_per_window: int
    window_seconds: list[float]
    info: dict[str, Any]

    @property
    def step_seconds(self) -> float:
        """Median over windows of the mean step time within a window."""
        return statistics.median(self.window_seconds) / self.steps_per_window

    @property
    def images_per_sec(self) -> float:
        return self.images_per_step / self.step_seconds

    def as_dict(self) -> dict[str, Any]:
        spread = [self.images_per_step * self.steps_per_window / s for s in self.window_seconds]
        return {
            "images_per_sec": self.images_per_sec,
            "step_seconds": self.step_seconds,
            "images_per_step": self.images_per_step,
            "steps_per_window": self.steps_per_window,
            "window_images_per_sec": spread,
            **self.info,
        }


def interleave(
    runners: Sequence[Runner], *, windows: int, steps: int, log: Any = None
) -> dict[str, Timed]:
    """Sets up every runner, then times ``windows`` windows of ``steps`` steps round-robin."""
    runners = list(runners)
    infos = {}
    for r in runners:
        _log(log, f"  setup {r.label} ...")
        start = time.perf_counter()
        infos[r.label] = r.setup()
        _log(log, f"  setup {r.label}: {time.perf_counter() - start:.1f} s")
    times: dict[str, list[float]] = {r.label: [] for r in runners}
    for w in range(windows):
        # Rotate the order so no runner always follows the same one (caches, thread wake-up).
        for r in runners[w % len(runners) :] + runners[: w % len(runners)]:
            start = time.perf_counter()
            r.run(steps)
            times[r.label].append(time.perf_counter() - start)
        _log(
            log,
            f"  window {w + 1}/{windows}: "
            + ", ".join(
                f"{r.label} {r.images_per_step * steps / times[r.label][-1]:.1f} img/s"
                for r in runners
            ),
        )
    for r in runners:
        r.close()
    return {
        r.label: Timed(r.label, r.images_per_step, steps, times[r.label], infos[r.label])
        for r in runners
    }


def _log(log: Any, message: str) -> None:
    if log is not None:
        log(message)


def cpu_model() -> str:
    """The CPU's marketing name from /proc/cpuinfo (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on (affinity), falling back to the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def memory_gb() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        return None


def hardware() -> dict[str, Any]:
    """Machine description without host names: CPU, cores, memory, JAX devices."""
    import jax

    devices = jax.devices()
    return {
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gb": memory_gb(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "os": f"{platform.system()} {platform.release()}",
    }


_PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "numpy",
    "torch",
    "torchvision",
    "keras",
    "tensorflow-cpu",
    "tensorflow",
)


def versions() -> dict[str, str | None]:
    """Versions of Python and the packages involved (None when not installed)."""
    out: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def now_utc() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def jsonable(value: Any) -> Any:
    """NumPy scalars as numbers, anything else JSON cannot hold as its text."""
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def write_record(out_dir: str, stem: str, record: dict[str, Any], table: str) -> str:
    """Writes ``<out_dir>/<stem>.json`` (the record) and ``<stem>.md`` (its table); returns the
    path without suffix."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, stem)
    with open(path + ".json", "w") as f:
        json.dump(record, f, indent=1, default=jsonable)
        f.write("\n")
    with open(path + ".md", "w") as f:
        f.write(table if table.endswith("\n") else table + "\n")
    return path
