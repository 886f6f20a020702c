"""``python -m resnet_jax.predict`` on bad input: a decompression bomb is skipped, a workdir
whose config.json names another model predicts with what its checkpoint holds, and every
wrong option or path ends in one line on stderr and exit status 2, before any model loads
and without a half-written file."""

import contextlib
import json
import pathlib
import shutil
import struct
import zlib

import ml_collections
import numpy as np
import pytest
from PIL import Image
from recipes import load_config

from resnet_jax import inference
from resnet_jax.images import BadImageError, load_rgb
from resnet_jax.predict import main
from resnet_jax.training import train_and_evaluate

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_CLASSES = 10
WIDTH = 8  # Embedding size of the tiny ResNet-20 below.


def bomb_png(path: pathlib.Path, side: int = 100_000) -> None:
    """A 70-byte PNG whose header claims side x side RGB pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 4)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training workdir: one step of a tiny ResNet-20 on 8x8 synthetic images, 10 classes."""
    config = load_config("default")
    config.model.name = "resnet20"
    config.model.kwargs = ml_collections.ConfigDict(
        {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, WIDTH), "stem_width": 4}
    )
    config.data.dataset = "synthetic"
    config.data.image_size = 8
    config.data.num_classes = NUM_CLASSES
    config.data.synthetic_size = 32
    config.batch_size = 16
    config.num_train_steps = 1
    config.optimizer.warmup_epochs = 0.0
    config.eval_every_steps = -1
    config.progress_bar = False
    config.tensorboard = False
    config.plot = False
    config.confusion_matrix_max_classes = 0
    workdir = tmp_path_factory.mktemp("workdir")
    train_and_evaluate(config, str(workdir))
    return workdir


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Three small RGB PNGs."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.fixture
def no_model_load(monkeypatch):
    """Fails the test if predict gets as far as loading weights."""

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(inference, "load_predictor", refuse)
    monkeypatch.setattr(inference, "random_predictor", refuse)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def labelled(out: str) -> list[str]:
    return [pathlib.Path(line).name for line in out.splitlines() if not line.startswith(" ")]


def test_decompression_bomb_is_skipped_with_its_reason_and_the_rest_labelled(
    workdir, images, tmp_path, capsys
):
    folder = tmp_path / "mixed"
    shutil.copytree(images, folder)
    bomb_png(folder / "1_bomb.png")
    assert (folder / "1_bomb.png").stat().st_size < 100
    with pytest.raises(BadImageError, match="1_bomb.png: not a readable image.*DecompressionBomb"):
        load_rgb(folder / "1_bomb.png")
    assert main([str(folder), "--checkpoint", str(workdir), "--top-k", "1"]) == 0
    out, err = capsys.readouterr()
    assert labelled(out) == ["0.png", "1.png", "2.png"]
    assert f"skipped {folder / '1_bomb.png'}: " in err and "DecompressionBombError" in err
    assert "1 file(s) skipped" in err


def test_workdir_predicts_with_the_architecture_its_checkpoint_holds(
    workdir, images, tmp_path, capsys
):
    assert main([str(images), "--checkpoint", str(workdir), "--top-k", "3"]) == 0
    intact = capsys.readouterr().out
    edited = tmp_path / "edited"
    shutil.copytree(workdir, edited)
    config = json.loads((edited / "config.json").read_text())
    config["model"].update(name="resnet32", kwargs={})  # 5 blocks a stage, wider: other params
    (edited / "config.json").write_text(json.dumps(config))
    assert main([str(images), "--checkpoint", str(edited), "--top-k", "3"]) == 0
    out, err = capsys.readouterr()
    assert out == intact
    assert f"note: {edited / 'config.json'} describes 'resnet32' ()" in err
    assert "its checkpoint holds 'resnet20' (stage_sizes=[1, 1, 1]" in err
    assert "using the checkpoint's own record" in err


def test_checkpoint_without_a_recorded_config_refuses_another_config_json(
    workdir, images, tmp_path, capsys
):
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    [meta_file] = old.glob("checkpoints/*/meta/metadata")
    meta = json.loads(meta_file.read_text())
    del meta["config"]  # As checkpoints written before the loop stored it.
    meta_file.write_text(json.dumps(meta))
    assert main([str(images), "--checkpoint", str(old), "--top-k", "1"]) == 0
    capsys.readouterr()  # config.json still describes the checkpoint: it predicts.
    config = json.loads((old / "config.json").read_text())
    config["model"]["name"] = "resnet32"
    config["model"]["kwargs"] = {}
    (old / "config.json").write_text(json.dumps(config))
    assert main([str(images), "--checkpoint", str(old)]) == 2
    line = one_line_error(capsys)
    assert line.startswith(f"error: The checkpoint in {old} (step 1) holds 'resnet20'")
    assert f"but {old / 'config.json'} describes 'resnet32' (architecture " in line
    assert "Restore the config.json that train.py wrote with this checkpoint" in line


def test_missing_checkpoint_is_one_line_before_loading(images, no_model_load, capsys):
    assert main([str(images), "--checkpoint", "/no/such/dir"]) == 2
    assert one_line_error(capsys) == (
        "error: --checkpoint /no/such/dir: no such directory; give a converted checkpoint or a "
        "training workdir (the --workdir of train.py)."
    )


def test_folder_that_is_no_checkpoint_says_so(images, tmp_path, capsys):
    assert main([str(images), "--checkpoint", str(tmp_path)]) == 2
    assert one_line_error(capsys) == (
        f"error: {tmp_path} is neither a converted checkpoint nor a training workdir (no "
        "config.json or checkpoints/ in it); give the folder that resnet_jax.convert or "
        "train.py wrote."
    )


def test_missing_input_is_named_before_loading(images, workdir, no_model_load, capsys):
    assert main([str(images), "/no/such/photo.jpg", "--checkpoint", str(workdir)]) == 2
    assert one_line_error(capsys) == (
        "error: /no/such/photo.jpg: no such file or folder; give image files or folders."
    )


def test_top_k_below_one_is_refused(images, workdir, no_model_load, capsys):
    for k in ("0", "-1"):
        with pytest.raises(SystemExit) as exit:
            main([str(images), "--checkpoint", str(workdir), "--top-k", k])
        assert exit.value.code == 2
        err = capsys.readouterr().err
        assert f"argument --top-k: must be at least 1, got {k}" in err


def test_predictor_refuses_top_k_below_one(images, workdir):
    predictor = inference.load_predictor(workdir)
    with pytest.raises(ValueError, match="top_k must be at least 1, got 0"):
        predictor.predict([images], top_k=0)


def test_top_k_above_the_number_of_classes_lists_them_all(images, workdir, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert (
        main([str(images), "--checkpoint", str(workdir), "--top-k", "50", "--output", str(out)])
        == 0
    )
    records = json.loads(out.read_text())
    assert [sorted(r["indices"]) for r in records] == [list(range(NUM_CLASSES))] * 3
    assert [pytest.approx(sum(r["probabilities"]), abs=1e-5) for r in records] == [1.0] * 3
    assert "wrote 3 predictions" in capsys.readouterr().out


def test_no_images_found_names_the_paths_and_the_extensions(
    workdir, tmp_path, no_model_load, capsys
):
    empty, other = tmp_path / "empty", tmp_path / "other"
    empty.mkdir()
    other.mkdir()
    (other / "notes.txt").write_text("no image")
    assert main([str(empty), str(other), "--checkpoint", str(workdir)]) == 2
    assert one_line_error(capsys) == (
        f"error: No images found under {empty}, {other} (recognised extensions: .bmp .gif .jpeg "
        ".jpg .png .ppm .tif .tiff .webp)."
    )


def test_only_unreadable_images_fail_and_write_nothing(workdir, tmp_path, capsys):
    (tmp_path / "a.png").write_text("not an image")
    out = tmp_path / "p.csv"
    assert main([str(tmp_path / "a.png"), "--checkpoint", str(workdir), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == (
        "error: None of the 1 image file(s) could be read (reasons above); nothing was written."
    )
    assert not out.exists()


def test_features_and_output_together_write_both(workdir, images, tmp_path, capsys):
    preds, feats = tmp_path / "sub" / "p.csv", tmp_path / "f.npz"
    args = [str(images), "--checkpoint", str(workdir), "--top-k", "2"]
    assert main([*args, "--features", str(feats), "--output", str(preds)]) == 0
    out = capsys.readouterr().out
    assert labelled(out)[:3] == ["0.png", "1.png", "2.png"]
    assert f"wrote 3 predictions to {preds}" in out
    assert f"wrote 3 embeddings of size {WIDTH} to {feats}" in out
    rows = preds.read_text().splitlines()
    assert rows[0] == "path,rank,index,label,probability" and len(rows) == 1 + 3 * 2
    saved = np.load(feats)
    assert saved["features"].shape == (3, WIDTH)
    assert [pathlib.Path(p).name for p in saved["paths"]] == ["0.png", "1.png", "2.png"]
    alone = tmp_path / "alone.npz"
    assert main([*args, "--features", str(alone)]) == 0
    np.testing.assert_array_equal(np.load(alone)["features"], saved["features"])
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["alone.npz", "f.npz", "p.csv", "sub"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--output", "x.txt", "--output {}: use a .json or .csv file name."),
        ("--features", "f.csv", "--features {}: use a .npz file name."),
        (
            "--output",
            "blocker/p.csv",
            "--output {}: {}/blocker is a file, not a folder; give another path.",
        ),
        ("--features", "taken.npz", "--features {} is a folder; give a file name."),
    ],
)
def test_bad_output_paths_fail_before_loading(
    option, value, message, images, workdir, tmp_path, no_model_load, capsys
):
    (tmp_path / "blocker").write_text("a file")
    (tmp_path / "taken.npz").mkdir()
    path = str(tmp_path / value)
    assert main([str(images), "--checkpoint", str(workdir), option, path]) == 2
    assert one_line_error(capsys) == "error: " + message.format(path, tmp_path)
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["blocker", "taken.npz"]


def test_failed_write_keeps_the_previous_file_whole(workdir, images, tmp_path, monkeypatch, capsys):
    feats = tmp_path / "f.npz"
    feats.write_bytes(b"the previous run's embeddings")

    def disk_full(file, **arrays):
        with open(file, "wb") if isinstance(file, str) else contextlib.nullcontext(file) as f:
            f.write(b"PK\x03\x04 partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    assert main([str(images), "--checkpoint", str(workdir), "--features", str(feats)]) == 2
    assert one_line_error(capsys) == "error: [Errno 28] No space left on device"
    assert feats.read_bytes() == b"the previous run's embeddings"
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]
