"""The repository's training recipes (configs/*.py), importable from any test."""

import importlib
import pathlib
import sys

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]


def load_config(name: str) -> ml_collections.ConfigDict:
    sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module(f"configs.{name}").get_config()
    finally:
        sys.path.remove(str(REPO))
