"""The 1000 ImageNet-1k classes in the standard (sorted synset) order, shipped with the package."""

from __future__ import annotations

import functools
from importlib import resources


@functools.cache
def imagenet_synsets_and_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    text = resources.files("resnet_jax.data").joinpath("assets/imagenet_classes.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if line]
    return tuple(r[0] for r in rows), tuple(r[1] for r in rows)


def imagenet_class_names() -> tuple[str, ...]:
    """Human-readable names, index i = class i of torchvision, timm, Keras and TFDS labels."""
    return imagenet_synsets_and_names()[1]
