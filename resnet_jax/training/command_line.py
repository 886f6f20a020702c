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

_CONFIG = re.compile(r"^--?config(?:=(.*))?$")
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def config_argument(argv: Sequence[str]) -> str | None:
    """The value of ``--config`` (``--config=X`` or ``--config X``) in ``argv``, or None."""
    for i, arg in enumerate(argv[1:], 1):
        match = _CONFIG.match(arg)
        if match:
            if match.group(1) is not None:
                return match.group(1)
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


def config_file_problem(spec: str, recipes: str) -> str | None:
    """Why ``spec`` (``path[:arg]``) names no config file, listing the recipes in ``recipes``."""
    path = spec.split(":", 1)[0]
    if os.path.isfile(path):
        return None
    what = "is a directory, not a config file" if os.path.isdir(path) else "does not exist"
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
