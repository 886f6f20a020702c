"""A TFDS dataset prepared from image files that include broken ones: the pipeline skips them
with a warning naming each file, keeps epochs and resumes exact, and evaluates the rest."""

import io
import logging

import numpy as np
import pytest
from PIL import Image

tfds = pytest.importorskip("tensorflow_datasets")

from resnet_jax.data import pipeline  # noqa: E402

_ROWS, _COLS = np.meshgrid(np.arange(20), np.arange(24), indexing="ij")
RGB = np.stack([_ROWS * 12, _COLS * 10, 255 - _ROWS * 6], -1).astype(np.uint8)


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def _files() -> dict[str, tuple[bytes, int]]:
    """File name -> (bytes, label): decodable oddities and broken files."""
    jpeg, png = _encoded(Image.fromarray(RGB), "JPEG"), _encoded(Image.fromarray(RGB), "PNG")
    good = {
        "rgb.jpg": jpeg,
        "grey.png": _encoded(Image.fromarray(RGB[..., 0]), "PNG"),
        "rgba.png": _encoded(Image.fromarray(np.dstack([RGB, RGB[..., :1]])), "PNG"),
        "cmyk.jpg": _encoded(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
        "png_inside.jpg": png,
        "deep.png": _encoded(Image.fromarray(RGB[..., 1].astype(np.uint16) * 257), "PNG"),
        "palette.gif": _encoded(Image.fromarray(RGB).convert("P"), "GIF"),
        "grey.jpg": _encoded(Image.fromarray(RGB[..., 2]), "JPEG"),
    }
    bad = {
        "empty.jpg": b"",
        "text.jpg": b"not an image",
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "truncated.png": png[: len(png) // 2],
        "scan.jpeg": _encoded(Image.fromarray(RGB), "TIFF"),
    }
    files = {**good, **bad}
    return {name: (data, i % 2) for i, (name, data) in enumerate(sorted(files.items()))}, set(bad)


FILES, BAD = _files()


class MessyImages(tfds.core.GeneratorBasedBuilder):
    """Image files stored as they are, as TFDS builders do for ImageNet's JPEGs."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(),
                    "label": tfds.features.ClassLabel(names=["a", "b"]),
                    "file_name": tfds.features.Text(),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for name, (data, label) in FILES.items():
            yield name, {"image": data, "label": label, "file_name": name}


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    MessyImages(data_dir=data_dir).download_and_prepare()
    c = pipeline.default_data_config()
    c.update(
        dict(
            dataset="messy_images",
            data_dir=data_dir,
            train_split="train",
            eval_split="train",
            image_size=16,
            train_preprocess="resize",
            eval_preprocess="resize",
            private_threads=0,
            download=False,
        )
    )
    return c


def test_training_skips_broken_records_naming_each_and_resumes_exactly(config, caplog):
    good = len(FILES) - len(BAD)
    kwargs = dict(global_batch_size=4, seed=3, process_index=0, process_count=1)
    with caplog.at_level(logging.WARNING):
        it = pipeline.create_train_iterator(config, **kwargs)
        stream = [next(it) for _ in range(10)]  # Three epochs of 13 records, 5 broken.
    for batch in stream:
        assert batch["image"].shape == (4, 16, 16, 3) and np.isfinite(batch["image"]).all()
    warned = caplog.text
    for name in BAD:
        assert f"Skipping image {name}" in warned, name
    from resnet_jax.data import sources

    assert BAD <= set(sources.skipped_records())
    resumed = pipeline.create_train_iterator(config, start_step=5, **kwargs)
    for want in stream[5:]:
        got = next(resumed)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])
    assert good < len(FILES)


def test_evaluation_counts_every_decodable_record_once(config):
    batches = list(
        pipeline.create_eval_iterator(config, global_batch_size=4, process_index=0, process_count=1)
    )
    assert len(batches) == 4  # ceil(13 / 4): the batch count does not depend on the skips.
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == len(FILES) - len(BAD)
    images = np.concatenate([b["image"] for b in batches])[mask > 0]
    assert images.shape[1:] == (16, 16, 3) and np.isfinite(images).all()
