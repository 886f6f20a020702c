"""What train.py checks in its command line, in one line each: the ``--config`` file exists and
every ``--config.<field>`` override names a field of that config (with the nearest one as a hint).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
from collections.abc import Sequence

import ml_collections
from etils import epath

from resnet_jax import storage

_CONFIG = re.compile(r"^--?config(?:=(.*))?$")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def _config_position(argv: Sequence[str]) -> tuple[int, str | None]:
    """Where ``--config``'s value is in ``argv`` (``--config=X`` or ``--config X``), and it."""
    for i, arg in enumerate(argv[1:], 1):
        match = _CONFIG.match(arg)
        if match:
            if match.group(1) is not None:
                return i, match.group(1)
            return i + 1, argv[i + 1] if i + 1 < len(argv) else None
    return 0, None


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` (``--config=X`` or ``--config X``) in ``argv``, or None."""
    return _config_position(argv)[1]


def fetch_remote_config(argv: Sequence[str], folder: str) -> list[str]:
    """``argv`` with a gs:// ``--config`` file (``path[:arg]``) copied into the local ``folder``:
    ml_collections loads config files with Python's source loader, from local paths only.
    Raises FileNotFoundError naming the file, or the bucket's problem, in one line."""
    argv = list(argv)
    i, value = _config_position(argv)
    remote = re.match(r"^([a-z][\w+.-]*://[^:]+)(:.*)?$", value or "")
    if remote is None:
        return argv
    path, arg = epath.Path(remote.group(1)), remote.group(2) or ""
    problem = storage.remote_problem(remote.group(1), "--config")
    if problem or not path.is_file():
        raise FileNotFoundError(problem or f"config file {remote.group(1)} does not exist.")
    local = storage.copy_into(path, folder)
    argv[i] = ("--config=" if argv[i].startswith("-") else "") + f"{local}{arg}"
    return argv


def config_file_problem(spec: str, recipes: str) -> str | None:
    """Why ``spec`` (``path[:arg]``) names no config file, listing the recipes in ``recipes``
    (when that folder exists)."""
    path = spec.split(":", 1)[0]
    if os.path.isfile(path):
        return None
    what = "is a directory, not a config file" if os.path.isdir(path) else "does not exist"
    if not os.path.isdir(recipes):
        return f"config file {path} {what}."
    names = sorted(n for n in os.listdir(recipes) if n.endswith(".py") and not n.startswith("_"))
    return (
        f"config file {path} {what}. The recipes are in {recipes}/: {', '.join(names)} "
        f"(e.g. --config={os.path.join(recipes, 'quickstart.py')})."
    )


def load_config(spec: str) -> ml_collections.ConfigDict:
    """``get_config([arg])`` of the config file ``spec`` (``path[:arg]``), as the flag loads it."""
    path, *arg = spec.split(":", 1)
    module_spec = importlib.util.spec_from_file_location("_config_to_check", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(*arg)


def override_paths(argv: Sequence[str]) -> list[str]:
    """The field paths that ``--config.<path>=...`` arguments override, in order."""
    return [m.group(1) for arg in argv[1:] if (m := _OVERRIDE.match(arg))]


def field_paths(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every field of ``config`` as a dotted path, sections included ('optimizer', ...)."""
    paths = []
    for key, value in config.items():
        paths.append(prefix + key)
        if isinstance(value, ml_collections.ConfigDict):
            paths += field_paths(value, f"{prefix}{key}.")
    return paths


def override_problem(config: ml_collections.ConfigDict, overrides: Sequence[str]) -> str | None:
    """Names the first override that is no field of ``config`` and the closest field, if any."""
    known = field_paths(config)
    for path in overrides:
        field = re.sub(r"\[[^]]*\]", "", path)  # Indices into tuple fields.
        if field in known:
            continue
        guess = difflib.get_close_matches(field, known, n=1, cutoff=0.6)
        hint = (
            f"did you mean --config.{guess[0]}?"
            if guess
            else "the recipe file and configs/default.py list the fields."
        )
        return f"--config.{path}: the config has no field {field!r}; {hint}"
    return None
