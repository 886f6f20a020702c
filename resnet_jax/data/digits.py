"""scikit-learn's bundled handwritten digits as a small real image dataset (no download).

1,797 grey 8x8 images of the digits 0-9 (UCI optdigits test set), upscaled to RGB
``image_size`` images. A fixed stratified split keeps 20% of each class for evaluation, so
the quickstart trains and evaluates on real data offline. NumPy and Pillow only.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np
from PIL import Image

CLASS_NAMES: tuple[str, ...] = tuple(str(d) for d in range(10))
EVAL_FRACTION = 0.2
SPLITS = ("train", "eval", "all")
_SPLIT_SEED = 0  # Fixed: the split is part of the dataset's definition, not of a run.


@functools.lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return images, digits.target.astype(np.int32)


def split_indices(split: str) -> np.ndarray:
    """Sorted indices of ``split`` ('train', 'eval' or 'all'); stratified and fixed forever."""
    if split not in SPLITS:
        raise ValueError(f"Unknown digits split {split!r}; expected one of {', '.join(SPLITS)}.")
    _, labels = _raw_digits()
    if split == "all":
        return np.arange(len(labels))
    rng = np.random.default_rng(_SPLIT_SEED)
    eval_idx = []
    for c in range(len(CLASS_NAMES)):
        members = rng.permutation(np.flatnonzero(labels == c))
        eval_idx.append(members[: int(round(EVAL_FRACTION * len(members)))])
    is_eval = np.zeros(len(labels), bool)
    is_eval[np.concatenate(eval_idx)] = True
    return np.flatnonzero(is_eval if split == "eval" else ~is_eval)


def upscale(image: np.ndarray, image_size: int) -> np.ndarray:
    """Upscales one grey uint8 image bilinearly to (image_size, image_size, 3) uint8 RGB."""
    grey = Image.fromarray(image).resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(grey.convert("RGB"))


@functools.lru_cache(maxsize=4)
def load_digits_split(split: str, image_size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, S, S, 3) uint8 and labels (N,) int32 of a split; cached, treat as read-only."""
    images, labels = _raw_digits()
    idx = split_indices(split)
    out = np.stack([upscale(images[i], image_size) for i in idx])
    out.setflags(write=False)
    split_labels = labels[idx]
    split_labels.setflags(write=False)
    return out, split_labels


def num_examples(split: str) -> int:
    """Number of examples in a digits split (1,438 train, 359 eval, 1,797 all)."""
    return len(split_indices(split))


def write_digits_folder(
    path: str | pathlib.Path,
    *,
    split: str = "train",
    image_size: int = 32,
    per_class: int | None = None,
) -> pathlib.Path:
    """Writes a split as PNGs in class subfolders ``path/<digit>/<index>.png``; returns ``path``.

    A folder of real images for the 'folder' dataset, fine-tuning and prediction demos;
    ``per_class`` keeps only the first n images of each class.
    """
    root = pathlib.Path(path)
    images, labels = load_digits_split(split, image_size)
    counts = dict.fromkeys(range(len(CLASS_NAMES)), 0)
    for image, label, index in zip(images, labels, split_indices(split), strict=True):
        if per_class is not None and counts[int(label)] >= per_class:
            continue
        counts[int(label)] += 1
        class_dir = root / CLASS_NAMES[label]
        class_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(class_dir / f"{index:04d}.png")
    return root
