"""Folder datasets: class subfolders, robust to files TensorFlow cannot decode."""

import io
import json
import os
import pathlib

import numpy as np
import pytest
from PIL import Image

from resnet_jax import spec
from resnet_jax.data import folder, pipeline, write_digits_folder

_ROWS, _COLS = np.meshgrid(np.arange(20), np.arange(24), indexing="ij")
RGB = np.stack([_ROWS * 12, _COLS * 10, 255 - _ROWS * 6], -1).astype(np.uint8)  # Smooth.


def _save(path, image: Image.Image, fmt: str, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, fmt, **kwargs)


@pytest.fixture(scope="module")
def messy_folder(tmp_path_factory):
    """Two classes of good, convertible and broken files; returns (root, good, bad) names."""
    root = tmp_path_factory.mktemp("messy")
    a, b = root / "a", root / "b"
    _save(a / "rgb.jpg", Image.fromarray(RGB), "JPEG")
    _save(a / "grey.png", Image.fromarray(RGB[..., 0]), "PNG")
    _save(a / "rgba.png", Image.fromarray(np.dstack([RGB, RGB[..., :1]])), "PNG")
    _save(a / "cmyk.jpg", Image.fromarray(RGB).convert("CMYK"), "JPEG")
    _save(b / "png_inside.jpg", Image.fromarray(RGB), "PNG")
    _save(b / "deep.png", Image.fromarray(RGB[..., 1].astype(np.uint16) * 257), "PNG")
    _save(b / "palette.gif", Image.fromarray(RGB).convert("P"), "GIF")
    (b / "empty.jpg").write_bytes(b"")
    (b / "text.jpg").write_text("not an image")
    buf = io.BytesIO()
    Image.fromarray(RGB).save(buf, "JPEG")
    (a / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    _save(a / "photo.tiff", Image.fromarray(RGB), "TIFF")  # Not an image extension: ignored.
    _save(b / "scan.jpeg", Image.fromarray(RGB), "TIFF")  # TIFF bytes TF cannot decode.
    good = {
        "rgb.jpg",
        "grey.png",
        "rgba.png",
        "cmyk.jpg",
        "png_inside.jpg",
        "deep.png",
        "palette.gif",
    }
    bad = {"empty.jpg", "text.jpg", "truncated.jpg", "scan.jpeg"}
    return root, good, bad


def test_scan_keeps_decodable_images_and_lists_the_rest(messy_folder):
    root, good, bad = messy_folder
    index = folder.scan_folder(root)
    assert index.class_names == ("a", "b")
    assert {p.rsplit("/", 1)[1] for p in index.files} == good
    assert {p.rsplit("/", 1)[1] for p in index.skipped} == bad
    assert index.labels == tuple(0 if "/a/" in p else 1 for p in index.files)


def test_every_kept_file_decodes_to_rgb_uint8(messy_folder):
    tf = pytest.importorskip("tensorflow")
    from resnet_jax.data import preprocess

    root, _, _ = messy_folder
    for path in folder.scan_folder(root).files:
        image = preprocess.decode_rgb(tf.io.read_file(path)).numpy()
        assert image.shape == (20, 24, 3) and image.dtype == np.uint8, path
        if path.endswith(("rgb.jpg", "cmyk.jpg")):
            assert np.abs(image.astype(int) - RGB).mean() < 8, path


def _folder_config(root, **overrides):
    config = pipeline.default_data_config()
    config.update(
        dict(
            dataset="folder",
            folder=str(root),
            image_size=16,
            eval_preprocess="resize",
            private_threads=0,
        )
    )
    config.update(overrides)
    return config


def test_pipeline_iterates_a_messy_folder_to_the_end(messy_folder):
    root, good, _ = messy_folder
    config = _folder_config(root, eval_folder=str(root))
    info = pipeline.get_dataset_info(config)
    assert (info.num_classes, info.num_train, info.num_eval) == (2, len(good), len(good))
    train = pipeline.create_train_iterator(
        config, global_batch_size=4, seed=0, process_index=0, process_count=1
    )
    for _ in range(5):  # Several epochs of 7 files.
        assert next(train)["image"].shape == (4, 16, 16, 3)
    batches = list(
        pipeline.create_eval_iterator(config, global_batch_size=4, process_index=0, process_count=1)
    )
    assert sum(b["mask"].sum() for b in batches) == len(good)


def test_digits_written_as_pngs_read_back_with_their_labels(tmp_path):
    root = write_digits_folder(tmp_path / "digits", split="eval", image_size=16, per_class=3)
    index = folder.scan_folder(root)
    assert index.class_names == tuple("0123456789") and len(index) == 30 and not index.skipped
    for path, label in zip(index.files, index.labels, strict=True):
        assert path.split("/")[-2] == str(label)
        assert Image.open(path).size == (16, 16)

    config = _folder_config(root, eval_fraction=0.34)
    info = pipeline.get_dataset_info(config)
    assert (info.num_train, info.num_eval, info.class_names) == (20, 10, tuple("0123456789"))
    batches = list(
        pipeline.create_eval_iterator(config, global_batch_size=8, process_index=0, process_count=1)
    )
    labels = np.concatenate([b["label"][b["mask"] == 1] for b in batches])
    np.testing.assert_array_equal(np.sort(labels), np.arange(10))  # One per class held out.


def test_folder_resume_reproduces_the_stream(tmp_path):
    root = write_digits_folder(tmp_path / "d", split="train", image_size=16, per_class=2)
    config = _folder_config(root, eval_fraction=0.0)
    kwargs = dict(global_batch_size=6, seed=5, process_index=1, process_count=2)
    it = pipeline.create_train_iterator(config, **kwargs)
    full = [next(it) for _ in range(7)]  # 10 files per process: epochs end mid-batch.
    resumed = pipeline.create_train_iterator(config, start_step=4, **kwargs)
    for want in full[4:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_missing_folder_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder.scan_folder(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="data.folder"):
        pipeline.get_dataset_info(spec.complete({"data": {"dataset": "folder"}}).data)


def test_holdout_split_is_fixed_stratified_and_disjoint(tmp_path):
    root = write_digits_folder(tmp_path / "d", split="train", image_size=8, per_class=10)
    index = folder.scan_folder(root)
    train, held = folder.holdout_split(index, 0.2)
    again, _ = folder.holdout_split(folder.scan_folder(root), 0.2)
    assert train.files == again.files
    assert not set(train.files) & set(held.files)
    assert len(train) + len(held) == 100
    np.testing.assert_array_equal(np.bincount(held.labels), [2] * 10)


def test_file_names_that_are_not_utf8_are_read(tmp_path):
    """Linux file names are bytes: b'caf\\xe9.jpg' (Latin-1) reaches tf.data as bytes."""
    root = tmp_path.as_posix().encode()
    for name, colour in ((b"a/caf\xe9.jpg", (250, 10, 10)), (b"b/na\xefve.png", (10, 10, 250))):
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fmt = "JPEG" if name.endswith(b".jpg") else "PNG"
        Image.new("RGB", (20, 24), colour).save(os.fsdecode(path), fmt)
    config = _folder_config(tmp_path, eval_folder=str(tmp_path))
    index = folder.scan_folder(tmp_path)
    assert len(index) == 2 and not index.skipped
    assert os.fsencode(index.files[0]).endswith(b"caf\xe9.jpg")
    (batch,) = pipeline.create_eval_iterator(
        config, global_batch_size=2, process_index=0, process_count=1
    )
    red = batch["image"][..., 0].mean(axis=(1, 2)) > batch["image"][..., 2].mean(axis=(1, 2))
    assert batch["mask"].tolist() == [1, 1] and red.tolist() == (batch["label"] == 0).tolist()
    train = pipeline.create_train_iterator(
        config, global_batch_size=2, seed=0, process_index=0, process_count=1
    )
    assert sorted(next(train)["label"].tolist()) == [0, 1]


def test_holdout_keeps_one_image_per_class_for_validation(tmp_path):
    root = write_digits_folder(tmp_path / "d", split="train", image_size=8, per_class=5)
    train, held = folder.holdout_split(folder.scan_folder(root), 0.1)  # 0.1 x 5 rounds to 0.
    np.testing.assert_array_equal(np.bincount(held.labels), [1] * 10)
    np.testing.assert_array_equal(np.bincount(train.labels), [4] * 10)


def test_holdout_refuses_a_class_of_one_image(tmp_path):
    root = write_digits_folder(tmp_path / "d", split="train", image_size=8, per_class=3)
    for extra in sorted((root / "7").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(ValueError) as error:
        folder.holdout_split(folder.scan_folder(root), 0.1)
    assert str(error.value).startswith(
        "Too few images to hold out a validation image per class: '7' (1). Each class needs at "
        "least 2 images (one to train on, one to validate); add images, or give a separate "
        "data.eval_folder."
    )


def test_the_kept_index_is_replaced_when_the_folder_changes(tmp_path, monkeypatch):
    root, workdir = tmp_path / "imgs", tmp_path / "workdir"
    write_digits_folder(root, split="train", image_size=8, per_class=2)
    first = folder.cached_scan(root, cache_dir=workdir)
    assert len(first.files) == 20
    Image.new("RGB", (8, 8)).save(root / "3" / "new.png")
    os.utime(root / "3", (1e9, 1e9))  # The class folder's time changes, as on any filesystem.
    monkeypatch.setattr(folder, "_scanned", {})  # A new process: only the kept index is shared.
    second = folder.cached_scan(root, cache_dir=workdir)
    assert len(second.files) == 21 and any(f.endswith("new.png") for f in second.files)
    kept = list(workdir.glob(f"{folder.INDEX_FILE_PREFIX}*"))
    assert [p.suffix for p in kept] == [".json"]  # Replaced in place; no temporary left.
    monkeypatch.setattr(folder, "_scanned", {})
    assert folder.cached_scan(root, cache_dir=workdir).files == second.files


def _counting_scans(monkeypatch) -> list:
    scans = []
    scan = folder.scan_folder
    monkeypatch.setattr(folder, "scan_folder", lambda *a, **k: scans.append(1) or scan(*a, **k))
    return scans


@pytest.mark.parametrize("new_process", [True, False])
def test_the_kept_index_notices_changes_below_a_class_subfolder(tmp_path, monkeypatch, new_process):
    """Images added to ``<class>/<sub>/``, to a folder that held only folders or nothing, and a
    removed subfolder each change only their own folder's time; each gives a rescan, in the same
    process as in a new one, and nothing else does."""
    root, workdir = tmp_path / "imgs", tmp_path / "workdir"
    write_digits_folder(root, split="train", image_size=8, per_class=2)
    for sub in ("sub", "2023/feb", "empty", "gone"):
        (root / "3" / sub).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "3" / "sub" / "a.png")
    Image.new("RGB", (8, 8)).save(root / "3" / "gone" / "g.png")
    os.utime(root / "3", (1e9, 1e9))
    scans = _counting_scans(monkeypatch)

    def count(changed: pathlib.Path | None = None, when: float = 0.0) -> int:
        if changed is not None:
            os.utime(changed, (when, when))
        assert (root / "3").stat().st_mtime == 1e9  # The class folder's time never changes.
        if new_process:
            monkeypatch.setattr(folder, "_scanned", {})
        return len(folder.cached_scan(root, cache_dir=workdir).files)

    assert len(folder.cached_scan(root, cache_dir=workdir).files) == 22 and len(scans) == 1
    assert count() == 22
    assert len(scans) == 1  # Nothing changed: read back (or kept in the process).
    Image.new("RGB", (8, 8)).save(root / "3" / "sub" / "b.png")
    assert count(root / "3" / "sub", 2e9) == 23 and len(scans) == 2
    Image.new("RGB", (8, 8)).save(root / "3" / "2023" / "feb" / "c.png")
    assert count(root / "3" / "2023" / "feb", 2e9) == 24 and len(scans) == 3
    Image.new("RGB", (8, 8)).save(root / "3" / "empty" / "d.png")
    assert count(root / "3" / "empty", 2e9) == 25 and len(scans) == 4
    (root / "3" / "gone" / "g.png").unlink()
    (root / "3" / "gone").rmdir()
    assert count(root / "3", 1e9) == 24 and len(scans) == 5  # Rescanned, not a stat error.
    files = folder.cached_scan(root, cache_dir=workdir).files
    assert sum(f.endswith(("sub/b.png", "feb/c.png", "empty/d.png")) for f in files) == 3
    assert len(scans) == 5


def test_an_index_kept_before_nested_times_were_recorded_is_read_back(tmp_path, monkeypatch):
    root, workdir = tmp_path / "imgs", tmp_path / "workdir"
    write_digits_folder(root, split="train", image_size=8, per_class=2)
    first = folder.cached_scan(root, cache_dir=workdir)
    (kept,) = workdir.glob(f"{folder.INDEX_FILE_PREFIX}*")
    record = json.loads(kept.read_text())
    del record["nested"]  # As the previous version wrote it.
    kept.write_text(json.dumps(record))
    monkeypatch.setattr(folder, "_scanned", {})
    scans = _counting_scans(monkeypatch)
    assert folder.cached_scan(root, cache_dir=workdir).files == first.files and scans == []
    assert json.loads(kept.read_text())["nested"] == []  # Completed in place.
