"""Trains a ResNet as a config file says: ``python train.py --config=configs/x.py --workdir=DIR``.

Any config field can be overridden on the command line (``--config.batch_size=512``); the
final config is saved in the workdir, and rerunning the same command resumes from the
latest checkpoint there.

Exit status: 0 when the run is complete; 75 (EX_TEMPFAIL) after a SIGTERM (preemption) once
a checkpoint of the step it stopped at is saved: rerun the same command to resume; 1 for a
config, checkpoint or non-finite-loss error (the message says which).
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `configs` importable anywhere.

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training recipe: configs/<recipe>.py, optionally with :arg.", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir",
    None,
    "Checkpoints, metrics, TensorBoard events and plots go here; a rerun resumes from it. "
    "Default: workdir/<recipe>.",
)
flags.mark_flags_as_required(["config"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not flags.FLAGS["verbosity"].present:  # The progress bar speaks; libraries stay quiet.
        logging.set_verbosity(logging.WARNING)
    workdir = _WORKDIR.value
    if workdir is None:
        recipe = config_flags.get_config_filename(flags.FLAGS["config"])
        workdir = os.path.join("workdir", os.path.splitext(os.path.basename(recipe))[0])

    from resnet_jax.checkpoint import CheckpointError
    from resnet_jax.training import train_and_evaluate
    from resnet_jax.training.faults import PREEMPTED_EXIT_CODE, NonFiniteError, Preempted
    from resnet_jax.training.validate import ConfigError

    try:
        train_and_evaluate(_CONFIG.value, workdir)
    except Preempted as e:
        print(f"train.py: {e}", file=sys.stderr)
        sys.exit(PREEMPTED_EXIT_CODE)
    except (ConfigError, CheckpointError, NonFiniteError) as e:
        sys.exit(f"train.py: {e}")


if __name__ == "__main__":
    app.run(main)
