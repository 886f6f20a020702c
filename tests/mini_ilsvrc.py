"""Test data the real loaders read offline: miniature ILSVRC-2012 archives for TFDS.

``write_mini_ilsvrc`` writes the two tar files TFDS's ``imagenet2012`` builder expects in its
manual_dir, laid out as the real ones are, with a handful of small JPEGs; ``prepare_mini_imagenet``
runs the real builder on them. NumPy, Pillow and the standard library only (TFDS lazily).
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import io
import os
import pathlib
import tarfile

import numpy as np
from PIL import Image

TRAIN_TAR = "ILSVRC2012_img_train.tar"
VAL_TAR = "ILSVRC2012_img_val.tar"


@dataclasses.dataclass(frozen=True)
class MiniIlsvrc:
    """What ``write_mini_ilsvrc`` wrote: synsets (in label order), and the image counts."""

    manual_dir: pathlib.Path
    synsets: tuple[str, ...]
    num_train: int
    num_val: int


def _tfds_label_file(name: str) -> list[str]:
    path = importlib.resources.files("tensorflow_datasets") / "datasets" / "imagenet2012" / name
    return path.read_text().split()


def _jpeg(rng: np.random.Generator, color: np.ndarray, size: tuple[int, int]) -> bytes:
    """A JPEG whose mean colour tells its class apart, with noise so that crops differ."""
    noise = rng.integers(-40, 40, size=(*size, 3))
    pixels = np.clip(color[None, None, :] + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_mini_ilsvrc(
    manual_dir: str | os.PathLike,
    *,
    num_val: int = 6,
    num_classes: int = 3,
    train_per_class: int = 4,
    image_size: tuple[int, int] = (40, 48),
    seed: int = 0,
) -> MiniIlsvrc:
    """Writes ``ILSVRC2012_img_train.tar`` and ``ILSVRC2012_img_val.tar`` into ``manual_dir``.

    The train tar holds one ``<synset>.tar`` per class with ``<synset>_<i>.JPEG`` images; the
    val tar holds the real first ``num_val`` names ``ILSVRC2012_val_00000001.JPEG``..., whose
    labels TFDS takes from its bundled list. Classes are those of the val images first, so
    every val label also has training images.
    """
    root = pathlib.Path(manual_dir)
    root.mkdir(parents=True, exist_ok=True)
    all_synsets = _tfds_label_file("labels.txt")
    val_synsets = _tfds_label_file("validation_labels.txt")[:num_val]
    classes = list(dict.fromkeys(val_synsets))
    for s in all_synsets:
        if len(classes) >= num_classes:
            break
        if s not in classes:
            classes.append(s)
    rng = np.random.default_rng(seed)
    palette = {s: rng.integers(40, 216, size=3) for s in classes}

    with tarfile.open(root / TRAIN_TAR, "w") as train_tar:
        for synset in classes:
            inner = io.BytesIO()
            with tarfile.open(fileobj=inner, mode="w") as class_tar:
                for i in range(train_per_class):
                    image = _jpeg(rng, palette[synset], image_size)
                    _add(class_tar, f"{synset}_{i + 1}.JPEG", image)
            _add(train_tar, f"{synset}.tar", inner.getvalue())

    with tarfile.open(root / VAL_TAR, "w") as val_tar:
        for i, synset in enumerate(val_synsets):
            image = _jpeg(rng, palette[synset], image_size)
            _add(val_tar, f"ILSVRC2012_val_{i + 1:08d}.JPEG", image)

    ordered = tuple(sorted(classes, key=all_synsets.index))
    return MiniIlsvrc(root, ordered, len(classes) * train_per_class, num_val)


def prepare_mini_imagenet(data_dir: str | os.PathLike, **kwargs) -> MiniIlsvrc:
    """Writes the mini archives to ``<data_dir>/downloads/manual`` and builds ``imagenet2012``
    from them with the real TFDS builder, as a user would with the real files."""
    import tensorflow_datasets as tfds

    from resnet_jax.data.sources import patch_tfds_importlib_resources

    patch_tfds_importlib_resources()
    mini = write_mini_ilsvrc(pathlib.Path(data_dir) / "downloads" / "manual", **kwargs)
    builder = tfds.builder("imagenet2012", data_dir=os.fspath(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(mini.manual_dir))
    )
    return mini
