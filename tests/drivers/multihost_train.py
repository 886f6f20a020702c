"""train.py as is, reporting each process's first batch, the params after every step (checksum
of the global arrays' local copies) and every restore; steps are slowed so a signal lands.

    python tests/drivers/multihost_train.py CONFIG WORKDIR [--config.field=value ...]
"""

import hashlib
import pathlib
import runpy
import sys
import time

import jax
import numpy as np

from resnet_jax import checkpoint, parallel
from resnet_jax.data import pipeline

TRAIN_PY = pathlib.Path(__file__).resolve().parents[2] / "train.py"
compile_step = parallel.DataParallel.compile
create_iterator = pipeline.create_train_iterator
restore = checkpoint.Checkpointer.restore


def local_step(state):
    return np.asarray(state.step.addressable_shards[0].data)


def local_checksum(params) -> str:
    local = jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), params)
    return checkpoint.state_checksum(local)


def reporting_compile(self, fn, *, donate_state, **kwargs):
    compiled = compile_step(self, fn, donate_state=donate_state, **kwargs)
    if not donate_state:
        return compiled

    def step(state, batch):
        state, metrics = compiled(state, batch)
        print("STEP", int(local_step(state)), local_checksum(state.params), flush=True)
        time.sleep(0.1)
        return state, metrics

    return step


def reporting_iterator(config, **kw):
    it = create_iterator(config, **kw)
    first = next(it)
    print("BATCH", hashlib.sha256(first["image"].tobytes()).hexdigest()[:16], flush=True)
    yield first
    yield from it


def reporting_restore(self, target, step=None):
    state, meta = restore(self, target, step)
    print("RESTORE", meta["step"], local_checksum(state.params), flush=True)
    return state, meta


if __name__ == "__main__":
    parallel.DataParallel.compile = reporting_compile
    pipeline.create_train_iterator = reporting_iterator
    checkpoint.Checkpointer.restore = reporting_restore
    config, workdir, *flags = sys.argv[1:]
    sys.argv = ["train.py", f"--config={config}", f"--workdir={workdir}", *flags]
    runpy.run_path(str(TRAIN_PY), run_name="__main__")
