"""train.py as is, after making each checkpoint commit slow (so that kills land inside
asynchronous writes) and reporting every save and restore with the state's checksum.

    COMMIT_DELAY_S=0.5 python tests/drivers/crash_resume_train.py CONFIG WORKDIR [--config...]
"""

import asyncio
import os
import pathlib
import runpy
import sys
import threading

from orbax.checkpoint._src.path import atomicity

from resnet_jax import checkpoint

TRAIN_PY = pathlib.Path(__file__).resolve().parents[2] / "train.py"
commit = atomicity.AtomicRenameTemporaryPath.finalize
save, restore = checkpoint.Checkpointer.save, checkpoint.Checkpointer.restore
lock = threading.Lock()


def report(*words):
    # One write per line under a lock: the commit thread's lines never split another's.
    line = " ".join(str(w) for w in words) + "\n"
    with lock:
        sys.stdout.write(line)
        sys.stdout.flush()


async def slow_commit(self):
    report("COMMIT")
    await asyncio.sleep(float(os.environ["COMMIT_DELAY_S"]))
    await commit(self)


def reporting_save(self, step, state, meta, **kw):
    report("SAVE", step, checkpoint.state_checksum(state))
    return save(self, step, state, meta, **kw)


def reporting_restore(self, target, step=None):
    state, meta = restore(self, target, step)
    report("RESTORE", int(state.step), checkpoint.state_checksum(state))
    return state, meta


if __name__ == "__main__":
    atomicity.AtomicRenameTemporaryPath.finalize = slow_commit
    checkpoint.Checkpointer.save = reporting_save
    checkpoint.Checkpointer.restore = reporting_restore
    config, workdir, *flags = sys.argv[1:]
    sys.argv = ["train.py", f"--config={config}", f"--workdir={workdir}", *flags]
    runpy.run_path(str(TRAIN_PY), run_name="__main__")
