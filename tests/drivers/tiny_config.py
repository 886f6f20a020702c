"""train.py's --config for the subprocess tests: the tiny synthetic run of tests/recipes.py.
Each test sets what it needs on top with --config.<field>=<value> flags."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from recipes import tiny_synthetic_config  # noqa: E402


def get_config():
    return tiny_synthetic_config()
