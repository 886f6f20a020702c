"""Trains a ResNet as a config file says: ``resnet-jax-train --config=configs/x.py --workdir=DIR``
(or ``python -m resnet_jax.training``, or the repository's ``python train.py``, all the same).

Any config field can be overridden on the command line (``--config.batch_size=512``); the
final config is saved in the workdir, and rerunning the same command resumes from the
latest checkpoint there.

Exit status: 0 when the run is complete; 75 (EX_TEMPFAIL) after a SIGTERM (preemption) once
a checkpoint of the step it stopped at is saved: rerun the same command to resume; 130 after
Ctrl-C (SIGINT), likewise once that checkpoint is saved (a second Ctrl-C quits at once, saving
nothing); 1 for a command-line, config, workdir, data, checkpoint or non-finite-loss error (the
message says which).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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


def parse_flags(argv: list[str], *, prog: str, recipes: str) -> list[str]:
    """absl's flag parsing, except that a missing config file or an override naming no field of
    the config is one line (ml_collections raises these as tracebacks)."""
    from resnet_jax.training import command_line

    spec = command_line.config_argument(argv)
    recipes = os.path.relpath(recipes) if os.getcwd() == os.path.dirname(recipes) else recipes
    problem = spec is not None and command_line.config_file_problem(spec, recipes)
    if problem:
        sys.exit(f"{prog}: {problem}")
    try:
        return app.parse_flags_with_usage(argv)
    except (AttributeError, KeyError):  # How ml_collections says an override names no field.
        if spec is None:
            raise
        config = command_line.load_config(spec)
        problem = command_line.override_problem(config, command_line.override_paths(argv))
        if problem is None:
            raise
        sys.exit(f"{prog}: {problem}")


def main(argv: list[str], *, prog: str) -> None:
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
    from resnet_jax.training.faults import INTERRUPTED_EXIT_CODE, NonFiniteError, Preempted
    from resnet_jax.training.validate import ConfigError

    try:
        train_and_evaluate(_CONFIG.value, workdir)
    except Preempted as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print(
            f"{prog}: Interrupted (Ctrl-C): stopped at once without saving; rerun the same "
            "command to resume from the last checkpoint.",
            file=sys.stderr,
        )
        sys.exit(INTERRUPTED_EXIT_CODE)
    except (ConfigError, CheckpointError, NonFiniteError) as e:
        sys.exit(f"{prog}: {e}")


def run(recipes: str = "configs") -> None:
    """The command line; ``recipes`` is the folder of config files (else the ``--config`` file's
    own), whose parent is made importable (the recipes import ``configs.default``)."""
    from resnet_jax import storage
    from resnet_jax.training import command_line

    given = command_line.config_argument(sys.argv)
    if given and not os.path.isdir(recipes) and not storage.is_remote(given):
        recipes = os.path.dirname(os.path.abspath(given.split(":", 1)[0]))
    recipes = os.path.abspath(recipes)
    sys.path.insert(0, os.path.dirname(recipes))
    prog = os.path.basename(sys.argv[0])
    prog = "python -m resnet_jax.training" if prog == "__main__.py" else prog
    parse = functools.partial(parse_flags, prog=prog, recipes=recipes)
    with tempfile.TemporaryDirectory() as folder:  # A gs:// config file, copied for its loader.
        try:
            argv = command_line.fetch_remote_config(sys.argv, folder)
        except FileNotFoundError as e:
            sys.exit(f"{prog}: {e}")
        app.run(functools.partial(main, prog=prog), argv=argv, flags_parser=parse)


if __name__ == "__main__":
    run()
