"""``train.py`` killed at random moments (SIGKILL, also mid checkpoint write) or preempted (SIGTERM)
always resumes from a complete checkpoint and ends bitwise where an uninterrupted run ends."""

import json
import os
import pathlib
import queue
import signal
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TOTAL, EVERY, KILLS = 60, 2, 10
LOG_STEPS = list(range(4, TOTAL + 1, 4))  # log_every_steps = 4.

DRIVERS = REPO / "tests" / "drivers"
# The tiny synthetic run of tests/recipes.py, longer, with a checkpoint every EVERY steps.
FLAGS = [
    "--config.data.synthetic_size=64",
    f"--config.num_train_steps={TOTAL}",
    "--config.log_every_steps=4",
    f"--config.checkpoint_every_steps={EVERY}",
    "--config.keep_checkpoints=3",
]


class Run:
    """One train.py process whose output lines are read as they come."""

    def __init__(
        self, tmp: pathlib.Path, workdir: pathlib.Path, delay: float, flags: tuple = ()
    ) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JAX_PLATFORMS": "cpu",
            "JAX_NUM_CPU_DEVICES": "2",
            "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
            "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
            "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
            "COMMIT_DELAY_S": str(delay),
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(DRIVERS / "crash_resume_train.py"),
                str(DRIVERS / "tiny_config.py"),
                str(workdir),
                *FLAGS,
                *flags,
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout: float = 120) -> bool:
        """Reads lines until one starts with ``prefix`` (True) or the process ends (False)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            if line is None:
                self.lines.put(None)
                return False
            self.log.append(line)
            if line.startswith(prefix):
                return True
        raise TimeoutError(f"no {prefix!r} line in {timeout} s:\n" + "\n".join(self.log[-30:]))

    def finish(self, timeout: float = 120) -> int:
        code = self.proc.wait(timeout=timeout)
        while self.wait_for("\0"):
            pass
        return code

    def records(self, kind: str) -> list[tuple[int, str]]:
        return [(int(w[1]), w[2]) for w in (x.split() for x in self.log) if w[:1] == [kind]]


def final_state(workdir: pathlib.Path, step: int = TOTAL) -> list[np.ndarray]:
    manager = ocp.CheckpointManager(workdir / "checkpoints", item_names=("state",))
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return [np.asarray(x) for x in jax.tree.leaves(restored["state"])]


def train_log_steps(workdir: pathlib.Path) -> list[int]:
    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    return [r["step"] for r in rows if r["split"] == "train"]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("crash")
    return tmp


@pytest.fixture(scope="module")
def uninterrupted(tmp):
    """The reference run; it also fills the compilation cache the restarted runs read."""
    run = Run(tmp, tmp / "straight", delay=0.0)
    assert run.finish() == 0, "\n".join(run.log[-40:])
    return dict(run.records("SAVE"))


def test_sigkill_at_random_moments_always_resumes_from_a_complete_checkpoint(tmp, uninterrupted):
    rng = np.random.default_rng(0)
    workdir = tmp / "killed"
    saved: dict[int, str] = {}  # Every state a process asked to save, by step.
    restored: list[int] = []
    mid_write = 0
    for trial in range(KILLS):
        run = Run(tmp, workdir, delay=0.15)
        # The k-th save request of a process waits for save k-1: saves up to k-2 are complete.
        saves = int(rng.integers(1, 3)) if trial % 2 == 0 else int(rng.integers(2, 4))
        started = all(run.wait_for("SAVE") for _ in range(saves))
        if trial % 2 == 0:  # During an asynchronous write: after one of its commits began.
            started = started and run.wait_for("COMMIT")
            time.sleep(rng.uniform(0.0, 0.1))
            writing = any(".orbax-checkpoint-tmp" in p for p in os.listdir(workdir / "checkpoints"))
        else:  # Anywhere once training runs: steps, saves, commits, deletions of old ones.
            time.sleep(rng.uniform(0.0, 0.6))
            writing = False
        if run.proc.poll() is not None:
            pytest.fail(f"trial {trial} ended before its kill:\n" + "\n".join(run.log[-30:]))
        run.proc.send_signal(signal.SIGKILL)
        assert run.finish() == -signal.SIGKILL
        mid_write += started and writing
        for step, checksum in run.records("RESTORE"):
            # Exactly the bits some earlier process saved for that step: never a partial write.
            assert saved[step] == checksum, step
            restored.append(step)
        for step, checksum in run.records("SAVE"):
            assert saved.setdefault(step, checksum) == checksum  # Every process: same bits.
    assert mid_write >= 3, "too few kills landed inside a checkpoint write"
    assert restored == sorted(restored) and len(restored) >= KILLS // 2

    run = Run(tmp, workdir, delay=0.0)
    assert run.finish() == 0, "\n".join(run.log[-40:])
    for step, checksum in run.records("RESTORE"):
        assert saved[step] == checksum
    saved.update(run.records("SAVE"))
    assert saved[TOTAL] == uninterrupted[TOTAL]
    for a, b in zip(final_state(tmp / "straight"), final_state(workdir), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not [p for p in os.listdir(workdir / "checkpoints") if "tmp" in p]
    assert train_log_steps(workdir) == LOG_STEPS  # Each step once, though runs were killed.


def test_sigterm_saves_the_next_step_exits_75_and_the_rerun_finishes_exactly(tmp, uninterrupted):
    workdir = tmp / "preempted"
    run = Run(tmp, workdir, delay=0.0)
    assert run.wait_for("SAVE")
    run.proc.send_signal(signal.SIGTERM)
    assert run.finish() == 75, "\n".join(run.log[-40:])
    stop = run.records("SAVE")[-1][0]
    assert stop < TOTAL
    assert any(f"Preempted (SIGTERM): stopped at step {stop}" in line for line in run.log)
    steps = ocp.CheckpointManager(workdir / "checkpoints").all_steps()
    assert max(steps) == stop  # The stop step's checkpoint is complete on disk.

    rerun = Run(tmp, workdir, delay=0.0)
    assert rerun.finish() == 0, "\n".join(rerun.log[-40:])
    assert rerun.records("RESTORE")[0][0] == stop
    assert rerun.records("SAVE")[-1] == (TOTAL, uninterrupted[TOTAL])
    assert train_log_steps(workdir) == LOG_STEPS


def test_ctrl_c_saves_the_next_step_exits_130_with_one_line_and_the_rerun_resumes(tmp):
    workdir = tmp / "interrupted"
    run = Run(tmp, workdir, delay=0.0)
    assert run.wait_for("SAVE")
    run.proc.send_signal(signal.SIGINT)
    assert run.finish() == 130, "\n".join(run.log[-40:])
    stop = run.records("SAVE")[-1][0]
    assert stop < TOTAL
    said = [line for line in run.log if line.startswith("train.py:")]
    assert said == [
        f"train.py: Interrupted (Ctrl-C): stopped at step {stop} (saved in "
        f"{workdir / 'checkpoints'}). Rerun the same command to resume from there."
    ]
    assert not [line for line in run.log if "Traceback" in line or "KeyboardInterrupt" in line]
    steps = ocp.CheckpointManager(workdir / "checkpoints").all_steps()
    assert max(steps) == stop  # The stop step's checkpoint is complete on disk.

    rerun = Run(tmp, workdir, delay=0.0)
    assert rerun.finish() == 0, "\n".join(rerun.log[-40:])
    assert rerun.records("RESTORE")[0][0] == stop
    assert rerun.records("SAVE")[-1][0] == TOTAL
