"""ImageNet through TFDS: the mocked builder and the real builder on miniature ILSVRC tars."""

import pathlib
import shlex
import subprocess
import sys

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

import mini_ilsvrc  # noqa: E402

from resnet_jax.data import pipeline  # noqa: E402


def _config(data_dir, **overrides):
    config = pipeline.default_data_config()
    config.update(
        dict(
            dataset="imagenet2012",
            data_dir=str(data_dir),
            image_size=32,
            private_threads=0,
            shuffle_buffer=64,
        )
    )
    config.update(overrides)
    return config


def test_mocked_imagenet_gives_batches_of_the_right_shape_and_range(tmp_path):
    with tfds.testing.mock_data(num_examples=10):
        config = _config(tmp_path)
        info = pipeline.get_dataset_info(config)  # Mock metadata is empty: counted instead.
        assert (info.num_classes, info.num_train, info.num_eval) == (1000, 10, 10)
        train = pipeline.create_train_iterator(
            config, global_batch_size=4, seed=0, process_index=0, process_count=1
        )
        batches = [next(train) for _ in range(3)]  # Crosses the 10-example epoch boundary.
        evals = list(
            pipeline.create_eval_iterator(
                config, global_batch_size=4, process_index=0, process_count=1
            )
        )
    for b in batches:
        assert b["image"].shape == (4, 32, 32, 3) and b["image"].dtype == np.float32
        assert b["label"].dtype == np.int32 and ((0 <= b["label"]) & (b["label"] < 1000)).all()
        # ImageNet-normalised pixels of [0, 255] images lie within [-2.2, 2.7].
        assert -2.2 <= b["image"].min() and b["image"].max() <= 2.7
    assert [b["mask"].tolist() for b in evals][-1] == [1, 1, 0, 0]
    assert len(evals) == 3


@pytest.fixture(scope="module")
def mini_imagenet(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    mini = mini_ilsvrc.prepare_mini_imagenet(data_dir, num_val=6, train_per_class=3)
    return data_dir, mini


def test_real_builder_prepares_the_miniature_ilsvrc_tars(mini_imagenet):
    data_dir, mini = mini_imagenet
    info = pipeline.get_dataset_info(_config(data_dir))
    assert info.num_classes == 1000 and info.class_names[0] == "n01440764"
    assert (info.num_train, info.num_eval) == (mini.num_train, mini.num_val)


def test_real_imagenet_train_and_eval_iterators(mini_imagenet):
    data_dir, mini = mini_imagenet
    config = _config(data_dir)
    synset_ids = {pipeline.get_dataset_info(config).class_names.index(s) for s in mini.synsets}
    train = pipeline.create_train_iterator(
        config, global_batch_size=8, seed=0, process_index=0, process_count=1
    )
    batch = next(train)
    assert batch["image"].shape == (8, 32, 32, 3) and set(batch["label"]) <= synset_ids
    evals = [
        list(
            pipeline.create_eval_iterator(
                config, global_batch_size=4, process_index=p, process_count=2
            )
        )
        for p in range(2)
    ]
    assert len(evals[0]) == len(evals[1]) == 2  # 3 examples per process, 2 per batch.
    seen = sum(b["mask"].sum() for batches in evals for b in batches)
    assert seen == mini.num_val


def test_real_imagenet_resume_matches_the_uninterrupted_stream(mini_imagenet):
    data_dir, _ = mini_imagenet
    config = _config(data_dir)
    kwargs = dict(global_batch_size=10, seed=2, process_index=0, process_count=1)
    it = pipeline.create_train_iterator(config, **kwargs)
    full = [next(it) for _ in range(4)]  # 18 examples: epoch boundaries inside steps 1 and 3.
    resumed = pipeline.create_train_iterator(config, start_step=2, **kwargs)
    for want in full[2:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["label"], want["label"])
        np.testing.assert_array_equal(got["image"], want["image"])


def test_missing_imagenet_files_say_where_tfds_expects_them(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        pipeline.get_dataset_info(_config(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "downloads" / "manual") in message
    assert "ILSVRC2012_img_train.tar" in message and "ILSVRC2012_img_val.tar" in message
    assert _readme_command(tmp_path) in message


REPO = pathlib.Path(__file__).resolve().parents[1]


def _readme_command(data_dir) -> str:
    """The README's ImageNet preparation command, with its /data/tfds moved to ``data_dir``."""
    lines = (REPO / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "ImageNet must be prepared once" in line)
    command = next(line for line in lines[start:] if "imagenet2012 --data_dir=" in line)
    return command.strip().replace("/data/tfds", str(data_dir))


def test_the_readme_command_prepares_imagenet_from_the_manual_tars(tmp_path):
    mini = mini_ilsvrc.write_mini_ilsvrc(
        tmp_path / "downloads" / "manual", num_val=5, train_per_class=2
    )
    argv = shlex.split(_readme_command(tmp_path))
    assert argv[:3] == ["python", "-m", "resnet_jax.data.prepare"]
    done = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"Prepared imagenet2012 in {tmp_path}" in done.stdout
    assert f"train: {mini.num_train}, validation: {mini.num_val}" in done.stdout
    (prepared,) = (tmp_path / "imagenet2012").glob("*/dataset_info.json")
    splits = tfds.builder_from_directory(str(prepared.parent)).info.splits
    # The 5 val images have 5 classes, each with 2 training images.
    assert (splits["train"].num_examples, splits["validation"].num_examples) == (10, 5)


def test_prepare_without_the_tars_names_them_and_fails(tmp_path, capsys):
    from resnet_jax.data import prepare

    assert prepare.main(["imagenet2012", f"--data_dir={tmp_path}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ImageNet (imagenet2012) cannot be downloaded automatically")
    assert "Traceback" not in err and "ILSVRC2012_img_train.tar" in err
    assert _readme_command(tmp_path) in err
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.tfrecord*"))


def test_prepare_takes_a_new_data_dir_and_leaves_none_behind_on_failure(tmp_path, capsys):
    """A data_dir that does not exist yet is what preparing is for (unlike train.py, which
    refuses one); a failed preparation writes no dataset files there."""
    from resnet_jax.data import prepare

    new = tmp_path / "tfds"
    assert prepare.main(["imagenet2012", f"--data_dir={new}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ImageNet (imagenet2012) cannot be downloaded automatically")
    assert "data.data_dir" not in err  # not refused as a mistyped train.py data_dir
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("*.tfrecord*"))
