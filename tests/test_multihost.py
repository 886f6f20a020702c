"""Two processes on localhost (``jax.distributed``, gloo CPU collectives, 4 devices each) run
``train.py`` end to end: own data shards, identical params after every step, one checkpoint,
one metrics file; SIGTERM to one process stops both at the same step, and a restart resumes."""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
TOTAL = 12

DRIVERS = REPO / "tests" / "drivers"
# The tiny synthetic run of tests/recipes.py, on two processes with BN groups of two devices.
FLAGS = [
    "--config.multihost=True",
    "--config.data.synthetic_size=256",
    "--config.batch_size=32",
    "--config.bn_group_size=2",
    f"--config.num_train_steps={TOTAL}",
    "--config.checkpoint_every_steps=8",
    "--config.keep_checkpoints=2",
    "--config.preemption_check_every_steps=2",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(tmp: pathlib.Path, workdir: pathlib.Path, name: str) -> list[subprocess.Popen]:
    """Both processes of one job; each keeps its own compilation cache across jobs."""
    port = free_port()
    procs = []
    for i in range(2):
        env = {
            **os.environ,
            "PYTHONPATH": str(REPO),
            "JAX_PLATFORMS": "cpu",
            "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
            "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(i),
            "JAX_NUM_CPU_DEVICES": "4",
            "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
            "JAX_COMPILATION_CACHE_DIR": str(tmp / f"jax_cache_{i}"),
            "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        }
        log = open(tmp / f"{name}_{i}.log", "w")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    str(DRIVERS / "multihost_train.py"),
                    str(DRIVERS / "tiny_config.py"),
                    str(workdir),
                    *FLAGS,
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    return procs


def records(tmp: pathlib.Path, name: str, i: int, kind: str) -> list[list[str]]:
    lines = (tmp / f"{name}_{i}.log").read_text().splitlines()
    return [line.split()[1:] for line in lines if line.startswith(kind + " ")]


def output(tmp: pathlib.Path, name: str, i: int) -> str:
    return (tmp / f"{name}_{i}.log").read_text()[-4000:]


def wait_for_step(tmp: pathlib.Path, name: str, i: int, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(int(r[0]) >= step for r in records(tmp, name, i, "STEP")):
            return
        time.sleep(0.05)
    raise TimeoutError(output(tmp, name, i))


def test_two_processes_stop_together_on_sigterm_to_one_and_resume(tmp_path):
    tmp = tmp_path
    workdir = tmp / "work"

    procs = launch(tmp, workdir, "first")
    try:
        wait_for_step(tmp, "first", 1, 3)
        procs[1].send_signal(signal.SIGTERM)  # Only process 1 is told; process 0 must follow.
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [75, 75], output(tmp, "first", 0) + output(tmp, "first", 1)
    stops = [records(tmp, "first", i, "STEP")[-1][0] for i in range(2)]
    assert stops[0] == stops[1]
    stop = int(stops[0])
    assert 3 < stop < TOTAL and stop % 2 == 0  # Agreed at a check step (every 2 steps).
    for i in range(2):
        assert f"stopped at step {stop}" in output(tmp, "first", i)
    assert sorted(os.listdir(workdir / "checkpoints"), key=int)[-1] == str(stop)

    first = {i: dict(records(tmp, "first", i, "STEP")) for i in range(2)}
    assert first[0] == first[1]  # Same params on both processes after every step.
    batches = [records(tmp, "first", i, "BATCH")[0][0] for i in range(2)]
    assert batches[0] != batches[1]  # Each process reads its own shard.

    procs = launch(tmp, workdir, "second")  # The same command on both hosts resumes.
    try:
        codes = [p.wait(timeout=240) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], output(tmp, "second", 0) + output(tmp, "second", 1)
    for i in range(2):
        assert records(tmp, "second", i, "RESTORE") == [[str(stop), first[0][str(stop)]]]
    second = {i: dict(records(tmp, "second", i, "STEP")) for i in range(2)}
    assert second[0] == second[1]
    assert sorted(map(int, second[0])) == list(range(stop + 1, TOTAL + 1))
    assert sorted(os.listdir(workdir / "checkpoints"), key=int)[-1] == str(TOTAL)

    rows = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    steps = [r["step"] for r in rows if r["split"] == "train"]
    assert steps == list(range(2, TOTAL + 1, 2))  # Logged once, by process 0 only.
    assert all(np.isfinite(r["loss"]) for r in rows)
