"""What a training run left in its workdir, loaded back on one device for use elsewhere.

The latest checkpoint's variables and the run's recorded config: what ``resnet_jax.inference``
builds a predictor from (its model and preset through ``resnet_jax.build.model_from_config`` and
``preset_from_config``), and what fine-tuning starts from (``config.init_from=WORKDIR``).
"""

from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections

from resnet_jax import storage
from resnet_jax.checkpoint import Checkpointer
from resnet_jax.training.ema import variables_for_inference
from resnet_jax.training.state import TrainState
from resnet_jax.training.workdir import CHECKPOINT_DIR, CONFIG_FILE


def is_workdir(path: storage.PathLike) -> bool:
    """True when ``path`` looks like a training workdir (a saved config or checkpoints)."""
    path = storage.path(path)
    return (path / CONFIG_FILE).is_file() or (path / CHECKPOINT_DIR).is_dir()


def read_config(workdir: storage.PathLike) -> ml_collections.ConfigDict:
    """The run's config as the loop saved it (``workdir/config.json``)."""
    path = storage.path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{workdir} has no {CONFIG_FILE}: not a training workdir written by train.py."
        )
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def load_variables(
    workdir: storage.PathLike, step: int | None = None, *, use_ema: bool = True
) -> tuple[dict[str, Any], dict[str, Any]]:
    """({'params', 'batch_stats'}, checkpoint metadata) of ``step`` (default: the latest): the
    weight EMA's when the run kept one and ``use_ema``, else the raw weights.

    Every array lands on the first local device, whatever mesh the run was trained on.
    """
    directory = storage.path(workdir) / CHECKPOINT_DIR
    if not directory.is_dir():
        raise FileNotFoundError(f"{workdir} has no checkpoints (looked for {directory}).")
    ckpt = Checkpointer(directory, async_save=False)
    try:
        step = ckpt.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No finished checkpoint in {directory}.")
        device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        target = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
            ckpt.state_metadata(step),
        )
        state, meta = ckpt.restore(TrainState(**target), step=step)
    finally:
        ckpt.close()
    return variables_for_inference(state, use_ema), meta
