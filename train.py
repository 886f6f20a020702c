"""Trains a ResNet as a config file says: ``python train.py --config=configs/x.py --workdir=DIR``.

Any config field can be overridden on the command line (``--config.batch_size=512``); the
final config is saved in the workdir, and rerunning the same command resumes from the
latest checkpoint there.

Exit status: 0 when the run is complete; 75 (EX_TEMPFAIL) after a SIGTERM (preemption) once
a checkpoint of the step it stopped at is saved: rerun the same command to resume; 130 after
Ctrl-C (SIGINT), likewise once that checkpoint is saved (a second Ctrl-C quits at once, saving
nothing); 1 for a command-line, config, workdir, data, checkpoint or non-finite-loss error (the
message says which).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # This checkout's resnet_jax.

from resnet_jax.training.__main__ import run  # noqa: E402

if __name__ == "__main__":
    run(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))
