"""The repository's training recipes (configs/*.py), importable from any test, the tiny
synthetic run and workdir digest the fault and workdir tests share, and random variables."""

import hashlib
import importlib
import os
import pathlib
import sys
from types import ModuleType

import ml_collections

REPO = pathlib.Path(__file__).resolve().parents[1]
TINY_STEPS = 6  # Of tiny_synthetic_config, with checkpoints at 2, 4 and 6.


def recipe(name: str) -> ModuleType:
    """The module of configs/<name>.py."""
    sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module(f"configs.{name}")
    finally:
        sys.path.remove(str(REPO))


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The config of ``--config=configs/<name>.py[:arg]``."""
    return recipe(name).get_config(arg) if arg else recipe(name).get_config()


def tiny_synthetic_config(**overrides) -> ml_collections.ConfigDict:
    """A 1-block-per-stage ResNet-20 on 8x8 synthetic images (no TensorFlow), 6 steps."""
    config = load_config("default")
    config.model.name = "resnet20"
    config.model.kwargs = ml_collections.ConfigDict(
        {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}
    )
    config.data.dataset = "synthetic"
    config.data.image_size = 8
    config.data.num_classes = 10
    config.data.synthetic_size = 128
    config.batch_size = 16
    config.num_train_steps = TINY_STEPS
    config.optimizer.warmup_epochs = 0.0
    config.log_every_steps = 2
    config.eval_every_steps = -1
    config.checkpoint_every_steps = 2
    config.progress_bar = False
    config.tensorboard = False
    config.plot = False
    config.confusion_matrix_max_classes = 0
    config.update(overrides)
    return config


def tree_digest(root: pathlib.Path) -> dict[str, str]:
    """Every file under ``root`` (names and bytes) and every directory name."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def random_variables(model, seed: int = 0) -> dict:
    """Random Flax variables at a trained network's scale, made by NumPy (no init compile)."""
    import numpy as np
    from flax import traverse_util

    from resnet_jax.convert.common import abstract_variables

    rng = np.random.default_rng(seed)
    flat = {}
    for path, leaf in abstract_variables(model).items():
        if path[-1] == "kernel":
            value = rng.standard_normal(leaf.shape) * np.sqrt(1.0 / np.prod(leaf.shape[:-1]))
        elif path[-1] in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            value = 0.1 * rng.standard_normal(leaf.shape)
        flat[path] = value.astype(np.float32)
    return traverse_util.unflatten_dict(flat)
