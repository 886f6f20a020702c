"""A new user's mistakes with ``train.py``: each is one line naming the problem and the fix, stops
before anything is built, and leaves nothing half-written (no workdir, no data_dir, no download)."""

import os
import pathlib
import shutil
import signal
import subprocess
import sys

import pytest
from recipes import load_config

from resnet_jax.training import command_line, train_and_evaluate, validate
from resnet_jax.training.faults import Preempted, PreemptionWatcher
from resnet_jax.training.validate import ConfigError, check_config

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPE_FILES = sorted(p.name for p in (REPO / "configs").glob("*.py") if p.name != "__init__.py")


def test_the_config_flag_is_found_in_both_spellings():
    assert command_line.config_argument(["t", "--config=a.py:x", "--workdir=w"]) == "a.py:x"
    assert command_line.config_argument(["t", "--workdir=w", "--config", "b.py"]) == "b.py"
    assert command_line.config_argument(["t", "--config.batch_size=8"]) is None


def test_a_missing_config_file_is_named_and_the_recipes_listed(monkeypatch):
    monkeypatch.chdir(REPO)
    assert command_line.config_file_problem("configs/quickstart.py:arg", "configs") is None
    problem = command_line.config_file_problem("configs/nope.py:resnet56", "configs")
    assert problem == (
        f"config file configs/nope.py does not exist. The recipes are in configs/: "
        f"{', '.join(RECIPE_FILES)} (e.g. --config=configs/quickstart.py)."
    )


def test_a_misspelt_override_names_the_field_and_the_nearest_one():
    config = command_line.load_config(str(REPO / "configs" / "cifar10_resnet.py") + ":resnet56")
    assert config.model.name == "resnet56"
    argv = ["t", "--config=x", "--config.batch_size=8", "--config.batch_sise=8"]
    assert command_line.override_paths(argv) == ["batch_size", "batch_sise"]
    assert command_line.override_problem(config, ["batch_size", "data.data_dir"]) is None
    assert command_line.override_problem(config, command_line.override_paths(argv)) == (
        "--config.batch_sise: the config has no field 'batch_sise'; did you mean "
        "--config.batch_size?"
    )
    nested = command_line.override_problem(config, ["optimiser.base_learning_rate"])
    assert nested.endswith("did you mean --config.optimizer.base_learning_rate?")
    unlike = command_line.override_problem(config, ["zzz"])
    assert unlike.endswith(
        "no field 'zzz'; the recipe file and configs/default.py list the fields."
    )


@pytest.mark.parametrize(
    "command, prog",
    [
        ([sys.executable, "train.py"], "train.py"),
        ([sys.executable, "-m", "resnet_jax.training"], "python -m resnet_jax.training"),
        ([shutil.which("resnet-jax-train")], "resnet-jax-train"),
    ],
)
def test_cli_prints_one_line_for_a_missing_config_file_and_a_misspelt_override(
    tmp_path, command, prog
):
    """End to end, for each way to start training: absl's flag parsing no longer ends in a
    traceback for either mistake."""
    runs = {
        "configs/nope.py": f"{prog}: config file configs/nope.py does not exist. The recipes",
        "configs/quickstart.py --config.batch_sise=8": (
            f"{prog}: --config.batch_sise: the config has no field 'batch_sise'; did you mean "
            "--config.batch_size?"
        ),
    }
    assert command[0], "the resnet-jax-train console script is not installed (pip install -e .)"
    for args, first_words in runs.items():
        workdir = tmp_path / "work"
        cmd = [*command, *f"--config={args} --workdir={workdir}".split()]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(first_words), proc.stderr
        assert not workdir.exists()


def test_the_console_script_runs_outside_the_repository(tmp_path):
    """From any folder: the --config file's recipes folder is found (its configs.default
    imports), and a missing file is one line."""
    runs = {
        f"--config={REPO / 'configs' / 'quickstart.py'} --config.batch_size=0": (
            "resnet-jax-train: Invalid config:\n  - batch_size=0 is not divisible"
        ),
        "--config=configs/nope.py": (
            "resnet-jax-train: config file configs/nope.py does not exist.\n"
        ),
    }
    for args, first_words in runs.items():
        cmd = [shutil.which("resnet-jax-train"), *args.split(), f"--workdir={tmp_path / 'work'}"]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and proc.stderr.startswith(first_words), proc.stderr
        assert "Traceback" not in proc.stderr and not (tmp_path / "work").exists()


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_a_workdir_blocked_by_a_file_fails_before_compile(no_compile, tmp_path, where):
    (tmp_path / "notes.txt").write_text("mine")
    workdir = tmp_path / "notes.txt" / ("run" if where == "under_file" else "")
    with pytest.raises(ConfigError) as error:
        train_and_evaluate(load_config("quickstart"), str(workdir).rstrip("/"))
    blocked = "is a file" if where == "file" else f"is under {tmp_path / 'notes.txt'}, a file"
    assert str(error.value) == (
        f"workdir {str(workdir).rstrip('/')} {blocked}, not a directory: pass --workdir=DIR "
        "naming a directory you can write to (new, or an earlier run's)."
    )
    assert os.listdir(tmp_path) == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def test_a_read_only_workdir_fails_before_compile_and_nothing_is_written(
    no_compile, tmp_path, monkeypatch
):
    # Root writes through chmod; a failing write probe stands for a read-only directory.
    def read_only(directory):
        raise PermissionError(13, "Permission denied", directory)

    monkeypatch.setattr(validate, "_probe_write", read_only)
    (tmp_path / "old").mkdir()
    for workdir, what in [
        (tmp_path / "old", "is not writable"),
        (tmp_path / "old" / "new", f"cannot be created in {tmp_path / 'old'}"),
    ]:
        with pytest.raises(ConfigError, match="^workdir ") as error:
            train_and_evaluate(load_config("quickstart"), str(workdir))
        assert str(error.value).startswith(f"workdir {workdir} {what} (Permission denied): pass")
    assert os.listdir(tmp_path / "old") == []


def test_the_write_probe_leaves_nothing_behind(tmp_path):
    validate.check_workdir(str(tmp_path / "new" / "run"))
    assert os.listdir(tmp_path) == []


@pytest.fixture
def no_download(monkeypatch):
    """Fails the test at once if TFDS is asked to download or prepare anything."""
    tfds = pytest.importorskip("tensorflow_datasets")

    def refuse(*args, **kwargs):
        raise AssertionError("a download was started")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", refuse)


@pytest.mark.parametrize(
    "recipe, dataset",
    [("cifar10_resnet", "cifar10"), ("imagenet_resnet50_colab_tpu", "imagenette/320px-v2")],
)
def test_an_unprepared_tfds_dataset_says_how_to_get_it_without_downloading(
    no_compile, no_download, tmp_path, recipe, dataset
):
    data_dir, workdir = tmp_path / "tfds", tmp_path / "work"
    data_dir.mkdir()
    config = load_config(recipe)
    config.data.data_dir = str(data_dir)
    with pytest.raises(ConfigError) as error:
        train_and_evaluate(config, str(workdir))
    assert str(error.value) == (
        f"data ({dataset!r}): TFDS dataset {dataset!r} is not prepared in {data_dir}: download "
        f"and prepare it once with `python -m resnet_jax.data.prepare {dataset} "
        f"--data_dir={data_dir}`, or rerun with --config.data.download=True to let the run "
        "download it (needs network)."
    )
    assert os.listdir(tmp_path) == ["tfds"] and os.listdir(data_dir) == []


def test_a_data_dir_that_does_not_exist_is_refused_and_not_created(
    no_compile, no_download, tmp_path
):
    config = load_config("imagenet_resnet50_colab_tpu")
    config.data.data_dir = str(tmp_path / "tfsd")
    with pytest.raises(ConfigError) as error:
        train_and_evaluate(config, str(tmp_path / "work"))
    assert str(error.value) == (
        f"data ('imagenette/320px-v2'): data.data_dir {tmp_path / 'tfsd'} does not exist "
        "(nothing was created): pass --config.data.data_dir=DIR naming the directory the "
        "datasets are prepared in."
    )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("base_learning_rate", -0.1, "optimizer.base_learning_rate=-0.1 must be > 0: it is"),
        ("base_learning_rate", 0.0, "optimizer.base_learning_rate=0.0 must be > 0: it is"),
        ("momentum", 1.0, "optimizer.momentum=1.0 must be in [0, 1): 0.9 is usual"),
        ("momentum", -0.5, "optimizer.momentum=-0.5 must be in [0, 1): 0.9 is usual"),
        ("weight_decay", -1e-4, "optimizer.weight_decay=-0.0001 must be >= 0 (0 turns it off)."),
        ("warmup_epochs", -1.0, "optimizer.warmup_epochs=-1.0 must be >= 0 (0 starts at the"),
        ("grad_clip_norm", -1.0, "optimizer.grad_clip_norm=-1.0 must be >= 0 (0 turns clipping"),
        ("lr_decay_factor", 0.0, "optimizer.lr_decay_factor=0.0 must be > 0: the 'step'"),
        ("end_learning_rate", -0.1, "optimizer.end_learning_rate=-0.1 must be >= 0"),
    ],
)
def test_impossible_optimizer_numbers_are_refused_naming_the_field(field, value, message):
    config = load_config("quickstart")
    config.optimizer[field] = value
    with pytest.raises(ConfigError) as error:
        check_config(config, num_devices=8, process_count=1)
    assert str(error.value).startswith(f"Invalid config:\n  - {message}")
    assert str(error.value).count("\n") == 1  # Only that field.


def test_every_unknown_choice_is_refused_naming_the_field_and_the_choices():
    config = load_config("quickstart")
    config.update(dtype="f8", parallelism="x", nonfinite="no")
    config.optimizer.update(name="adamz", lr_schedule="q")
    config.data.update(
        image_dtype="int4",
        interpolation="cubic",
        pipeline="graim",
        train_preprocess="inception",
        eval_preprocess="crop",
    )
    with pytest.raises(ConfigError) as error:
        check_config(config, num_devices=8, process_count=1)
    assert str(error.value) == (
        "Invalid config:\n"
        "  - dtype 'f8' is not one of ('float32', 'bfloat16', 'float16').\n"
        "  - parallelism 'x' is not one of ('shard_map', 'pmap').\n"
        "  - optimizer.name 'adamz' is not one of ('sgd', 'lars', 'lamb').\n"
        "  - optimizer.lr_schedule 'q' is not one of ('cosine', 'step', 'polynomial', "
        "'constant').\n"
        "  - data.image_dtype 'int4' is not one of ('float32', 'uint8') ('uint8' ships pixels and "
        "normalises them on the devices).\n"
        "  - data.interpolation 'cubic' is not one of ('bilinear', 'bicubic', 'nearest', "
        "'lanczos3').\n"
        "  - data.pipeline 'graim' is not one of ('grain', 'tfdata').\n"
        "  - data.train_preprocess 'inception' is not one of ('inception_crop', 'cifar_crop', "
        "'resize').\n"
        "  - data.eval_preprocess 'crop' is not one of ('center_crop', 'resize').\n"
        "  - nonfinite 'no' is not one of ('stop', 'skip')."
    )


def test_ctrl_c_asks_for_a_stop_once_and_quits_at_the_second():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as watcher:
        os.kill(os.getpid(), signal.SIGINT)
        assert watcher.should_stop(1) and watcher.signum == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    stopped = Preempted(7, "/w/checkpoints", signal.SIGINT)
    assert stopped.exit_code == 130
    assert str(stopped) == (
        "Interrupted (Ctrl-C): stopped at step 7 (saved in /w/checkpoints). Rerun the same "
        "command to resume from there."
    )
    assert Preempted(7, None).exit_code == 75
