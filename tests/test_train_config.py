"""Recipes load and say what they are for; bad input fails with a clear message before anything
compiles. (Every recipe resolving and building its network: tests/test_spec.py.)"""

import importlib
import os
import pathlib
import subprocess
import sys

import ml_collections
import pytest

from resnet_jax.training import train_and_evaluate
from resnet_jax.training.validate import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPES = [p.stem for p in sorted((REPO / "configs").glob("*.py")) if p.stem != "__init__"]


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    sys.path.insert(0, str(REPO))
    try:
        module = importlib.import_module(f"configs.{name}")
        return module.get_config(arg) if arg else module.get_config()
    finally:
        sys.path.remove(str(REPO))


def test_every_recipe_is_listed():
    assert set(RECIPES) >= {
        "default",
        "imagenet_resnet50_gpu8",
        "imagenet_resnet50_tpu_pod",
        "imagenet_resnet50_colab_tpu",
        "cifar10_resnet",
        "benchmark_synthetic",
        "quickstart",
    }


def test_recipes_say_what_they_are_for():
    gpu = load_config("imagenet_resnet50_gpu8")
    assert (gpu.model.name, gpu.data.dataset, gpu.dtype) == ("resnet50", "imagenet2012", "bfloat16")
    assert gpu.optimizer.nesterov and gpu.batch_size == 1024 and gpu.bn_group_size == 0
    pod = load_config("imagenet_resnet50_tpu_pod")
    assert pod.optimizer.name == "lars" and pod.label_smoothing == 0.1 and pod.bn_group_size > 0
    assert pod.multihost
    quick = load_config("quickstart")
    assert quick.data.dataset == "digits" and quick.model.name == "resnet20"


@pytest.mark.parametrize("arg", ["resnet20", "32", "resnet44", "resnet56", "110"])
def test_cifar_depth_is_chosen_by_the_config_argument(arg):
    config = load_config("cifar10_resnet", arg)
    depth = arg.removeprefix("resnet")
    assert config.model.name == f"resnet{depth}"
    assert config.optimizer.lr_boundaries_steps == (32_000, 48_000)
    assert config.batch_size == 128 and config.num_train_steps == 64_000
    assert (config.optimizer.warmup_epochs > 0) == (depth == "110")


def test_batch_not_divisible_by_devices_fails_before_compile(no_compile, tmp_path):
    config = load_config("quickstart")
    config.batch_size = 60
    with pytest.raises(ConfigError, match=r"batch_size=60 is not divisible by .* devices \(8\)"):
        train_and_evaluate(config, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_unknown_model_lists_the_known_ones(no_compile, tmp_path):
    config = load_config("quickstart")
    config.model.name = "resnet51"
    with pytest.raises(ConfigError, match=r"Unknown model 'resnet51'.*resnet50.*resnet56"):
        train_and_evaluate(config, str(tmp_path))


def test_unknown_dataset_is_named(no_compile, tmp_path):
    config = load_config("quickstart")
    config.data.dataset = "not_a_dataset"
    with pytest.raises(ConfigError, match="Unknown dataset 'not_a_dataset'"):
        train_and_evaluate(config, str(tmp_path))


def test_missing_imagenet_says_where_the_tars_go_and_how_to_prepare(no_compile, tmp_path):
    config = load_config("imagenet_resnet50_gpu8")
    config.data.data_dir = str(tmp_path / "tfds")
    (tmp_path / "tfds").mkdir()
    with pytest.raises(ConfigError) as error:
        train_and_evaluate(config, str(tmp_path / "work"))
    message = str(error.value)
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert str(tmp_path / "tfds" / "downloads" / "manual") in message
    assert "python -m resnet_jax.data.prepare imagenet2012" in message


def test_command_line_overrides_reach_the_run_and_errors_are_clean(tmp_path):
    """train.py parses --config.* overrides and reports config errors without a traceback."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "--config=configs/cifar10_resnet.py:resnet56",
        "--config.batch_size=100",
        f"--workdir={tmp_path}",
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "batch_size=100 is not divisible by the number of devices (8)" in proc.stderr
    assert "Traceback" not in proc.stderr
