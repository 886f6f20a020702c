"""The ImageNet recipe end to end, shrunk: on mocked TFDS data and on the real imagenet2012
builder fed with miniature ILSVRC tar files (the manual-download layout)."""

import importlib
import json
import os
import pathlib
import sys

import jax
import jax.numpy as jnp
import mini_ilsvrc
import ml_collections
import pytest
import tensorflow_datasets as tfds

from resnet_jax.training import train_and_evaluate

REPO = pathlib.Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("fast_compile")


def small_imagenet_config(data_dir: str) -> ml_collections.ConfigDict:
    """configs/imagenet_resnet50_gpu8.py with a one-block-per-stage ResNet-50 at 32 px."""
    sys.path.insert(0, str(REPO))
    try:
        config = importlib.import_module("configs.imagenet_resnet50_gpu8").get_config()
    finally:
        sys.path.remove(str(REPO))
    config.model.kwargs = ml_collections.ConfigDict(
        {"stage_sizes": (1, 1, 1, 1), "stage_widths": (8, 8, 8, 8), "stem_width": 8}
    )
    config.data.data_dir = data_dir
    config.data.image_size = 32
    config.data.shuffle_buffer = 64
    config.data.private_threads = 0
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 3
    config.optimizer.warmup_epochs = 0.0
    config.log_every_steps = 1
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 3
    config.progress_bar = False
    config.plot = False
    return config


def read_rows(workdir: str) -> list[dict]:
    return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def test_imagenet_config_trains_under_mock_data(tmp_path):
    (tmp_path / "tfds").mkdir()
    config = small_imagenet_config(str(tmp_path / "tfds"))
    config.num_eval_steps = 1
    # mock_data swaps in a fake file system process-wide while it builds a dataset; a
    # background checkpoint write at that moment would land there. Save synchronously.
    config.async_checkpointing = False
    workdir = str(tmp_path / "work")
    with tfds.testing.mock_data(num_examples=16):
        result = train_and_evaluate(config, workdir)
    assert result["step"] == 3
    state = result["state"]
    # bf16 compute, float32 parameters and BatchNorm statistics.
    assert config.dtype == "bfloat16"
    assert {x.dtype for x in jax.tree.leaves(state.params)} == {jnp.dtype("float32")}
    assert {x.dtype for x in jax.tree.leaves(state.batch_stats)} == {jnp.dtype("float32")}
    assert state.params["fc"]["kernel"].shape == (32, 1000)
    rows = read_rows(workdir)
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3]
    (eval_row,) = [r for r in rows if r["split"] == "eval"]
    assert eval_row["count"] == 8  # One eval step of 8 mocked images.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int) == ["2", "3"]


def test_real_imagenet_builder_prepares_mini_ilsvrc_and_trains(tmp_path):
    data_dir = tmp_path / "tfds"
    mini = mini_ilsvrc.write_mini_ilsvrc(
        data_dir / "downloads" / "manual", num_val=6, num_classes=3, train_per_class=4
    )
    config = small_imagenet_config(str(data_dir))
    workdir = str(tmp_path / "work")
    result = train_and_evaluate(config, workdir)  # Prepares imagenet2012 from the tars first.
    assert (data_dir / "imagenet2012").is_dir()
    assert result["step"] == 3
    rows = read_rows(workdir)
    (eval_row,) = [r for r in rows if r["split"] == "eval"]
    assert eval_row["count"] == mini.num_val == 6  # All six, in one padded batch of 8.
    assert 0.0 <= eval_row["top1"] <= eval_row["top5"] <= 1.0
    assert json.load(open(os.path.join(workdir, "config.json")))["data"]["data_dir"] == str(
        data_dir
    )
