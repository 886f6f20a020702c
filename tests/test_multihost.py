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

CONFIG = f"""
import ml_collections
from configs import default


def get_config():
    config = default.get_config()
    config.multihost = True
    config.model.name = "resnet20"
    config.model.kwargs = ml_collections.ConfigDict(
        {{"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}}
    )
    config.data.dataset = "synthetic"
    config.data.image_size = 8
    config.data.num_classes = 10
    config.data.synthetic_size = 256
    config.batch_size = 32
    config.bn_group_size = 2
    config.num_train_steps = {TOTAL}
    config.optimizer.warmup_epochs = 0.0
    config.log_every_steps = 2
    config.eval_every_steps = -1
    config.checkpoint_every_steps = 8
    config.keep_checkpoints = 2
    config.preemption_check_every_steps = 2
    config.progress_bar = False
    config.tensorboard = False
    config.plot = False
    return config
"""

# train.py as is, reporting each process's first batch, the params after every step (checksum
# of the global arrays' local copies) and every restore; steps are slowed so a signal lands.
DRIVER = """
import hashlib, os, runpy, sys, time
import jax
import numpy as np
from resnet_jax import checkpoint, parallel
from resnet_jax.data import pipeline

compile_step = parallel.DataParallel.compile
create_iterator = pipeline.create_train_iterator


def reporting_compile(self, fn, *, donate_state, **kwargs):
    compiled = compile_step(self, fn, donate_state=donate_state, **kwargs)
    if not donate_state:
        return compiled

    def step(state, batch):
        state, metrics = compiled(state, batch)
        local = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), state.params)
        print("STEP", int(local_step(state)), checkpoint.state_checksum(local), flush=True)
        time.sleep(0.1)
        return state, metrics

    return step


def local_step(state):
    return np.asarray(state.step.addressable_shards[0].data)


def reporting_iterator(config, **kw):
    it = create_iterator(config, **kw)
    first = next(it)
    print("BATCH", hashlib.sha256(first["image"].tobytes()).hexdigest()[:16], flush=True)
    yield first
    yield from it


restore = checkpoint.Checkpointer.restore


def reporting_restore(self, target, step=None):
    state, meta = restore(self, target, step)
    local = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), state.params)
    print("RESTORE", meta["step"], checkpoint.state_checksum(local), flush=True)
    return state, meta


parallel.DataParallel.compile = reporting_compile
pipeline.create_train_iterator = reporting_iterator
checkpoint.Checkpointer.restore = reporting_restore
sys.argv = ["train.py", "--config=" + sys.argv[1], "--workdir=" + sys.argv[2]]
runpy.run_path(os.path.join(os.environ["REPO"], "train.py"), run_name="__main__")
"""


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
            "REPO": str(REPO),
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
                [sys.executable, str(tmp / "driver.py"), str(tmp / "config.py"), str(workdir)],
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
    (tmp / "config.py").write_text(CONFIG)
    (tmp / "driver.py").write_text(DRIVER)
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
