"""A tiny TFDS image dataset built offline, to test the ArrayRecord (Grain) and TFRecord paths."""

import numpy as np
import tensorflow_datasets as tfds


class TinyPhotos(tfds.core.GeneratorBasedBuilder):
    """12 train and 4 validation 12x16 JPEG images, labels alternating 0, 1."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "label": tfds.features.ClassLabel(num_classes=2),
        }
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(features))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples(12), "validation": self._generate_examples(4)}

    def _generate_examples(self, n):
        rng = np.random.default_rng(n)
        for i in range(n):
            image = np.full((12, 16, 3), rng.integers(0, 255, 3), np.uint8)
            yield i, {"image": image, "label": i % 2}
