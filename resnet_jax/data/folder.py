"""A folder of images with one subfolder per class (``root/<class>/<image>``), scanned in Python.

Files are checked up front with Pillow so that the TF pipeline never meets an image it cannot
decode: empty, truncated, non-image and unsupported-format files are skipped, each logged with
its reason and listed in ``FolderIndex.skipped``. Grey, RGBA, CMYK and 16-bit images are kept;
the decoder turns them into RGB uint8.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os

import numpy as np
from absl import logging
from etils import epath
from PIL import Image

from resnet_jax import storage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp")
# What tf.io.decode_image reads ('MPO' is Pillow's name for multi-picture camera JPEGs).
TF_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
CHECKS = ("full", "header")
_SPLIT_SEED = 0  # The hold-out split is part of the folder's definition, not of a run.


@dataclasses.dataclass(frozen=True)
class FolderIndex:
    """Image files, their integer labels, the class names (sorted subfolders) and skipped files.

    ``skipped`` maps each skipped path to the reason it could not be used.
    """

    files: tuple[str, ...]
    labels: tuple[int, ...]
    class_names: tuple[str, ...]
    skipped: dict[str, str] = dataclasses.field(default_factory=dict, hash=False)

    def __len__(self) -> int:
        return len(self.files)

    def subset(self, indices: np.ndarray | list[int]) -> FolderIndex:
        """The examples at ``indices`` with the same classes (and no skipped files)."""
        return FolderIndex(
            files=tuple(self.files[i] for i in indices),
            labels=tuple(self.labels[i] for i in indices),
            class_names=self.class_names,
        )


@functools.lru_cache(maxsize=65536)
def _check_cached(path: str, size: int, mtime_ns: int, check: str) -> str | None:
    del size, mtime_ns  # Cache keys: a rewritten file is checked again.
    try:
        with epath.Path(path).open("rb") as f:
            with Image.open(f) as image:
                if image.format not in TF_FORMATS:
                    return f"format {image.format} is not one TensorFlow decodes"
                image.verify()
            if check == "full":
                f.seek(0)
                with Image.open(f) as image:
                    image.load()
    except Exception as e:  # Pillow raises many types for broken files; all mean "skip".
        return f"{type(e).__name__}: {e}"
    return None


def check_image(path: str, check: str = "full") -> str | None:
    """Returns why the TF decoder cannot read ``path``, or None if it can.

    'header' opens and verifies the header; 'full' also decodes the pixels (finds truncation).
    """
    if check not in CHECKS:
        raise ValueError(f"Unknown image check {check!r}; expected one of {', '.join(CHECKS)}.")
    try:
        size, mtime = storage.stat(path)
    except OSError as e:
        return f"{type(e).__name__}: {e}"
    if size == 0:
        return "empty file"
    return _check_cached(path, size, mtime, check)


def scan_folder(
    path: str | os.PathLike,
    *,
    check: str = "full",
    extensions: tuple[str, ...] = IMAGE_EXTENSIONS,
    num_threads: int = 8,
) -> FolderIndex:
    """Lists ``path/<class>/**/<image>`` files (sorted; local or gs://) and checks each one; see
    ``check_image``. Files without an image extension are ignored; image files that fail the
    check are skipped.
    """
    root = _root(path)
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(root)!r} does not exist or is not a folder. Expected one "
            "subfolder per class holding its images, e.g. <folder>/cat/1.jpg, <folder>/dog/2.jpg."
        )
    class_names = tuple(sorted(d.name for d in root.iterdir() if d.is_dir()))
    if not class_names:
        raise ValueError(
            f"Image folder {str(root)!r} has no class subfolders; put each class's images in "
            "its own subfolder, e.g. <folder>/cat/1.jpg."
        )
    candidates: list[tuple[str, int]] = []
    wanted = tuple(e.lower() for e in extensions)
    for label, name in enumerate(class_names):
        for dirpath, dirnames, filenames in storage.walk(root / name):
            dirnames.sort()
            for f in sorted(filenames):
                if f.lower().endswith(wanted) and not f.startswith("."):
                    candidates.append((os.path.join(dirpath, f), label))

    with concurrent.futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        reasons = list(pool.map(lambda c: check_image(c[0], check), candidates))

    files, labels, skipped = [], [], {}
    for (file, label), reason in zip(candidates, reasons, strict=True):
        if reason is None:
            files.append(file)
            labels.append(label)
        else:
            skipped[file] = reason
            logging.warning("Skipping image %s: %s", file, reason)
    if not files:
        raise ValueError(
            f"Image folder {str(root)!r} has no readable images with extensions "
            f"{', '.join(extensions)} ({len(skipped)} skipped)."
        )
    return FolderIndex(tuple(files), tuple(labels), class_names, skipped)


def holdout_split(index: FolderIndex, eval_fraction: float) -> tuple[FolderIndex, FolderIndex]:
    """Splits into (train, eval), holding out ``eval_fraction`` of every class, at least one
    image and at most all but one: every class is both trained on and validated.

    Fixed for a given folder: seeded by a constant, so training runs and later evaluations agree.
    Raises ValueError naming the classes with fewer than 2 images.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}.")
    labels = np.asarray(index.labels)
    counts = np.bincount(labels, minlength=len(index.class_names))
    small = [f"{index.class_names[c]!r} ({counts[c]})" for c in np.flatnonzero(counts < 2)]
    if small:
        raise ValueError(
            f"Too few images to hold out a validation image per class: {', '.join(small)}. "
            "Each class needs at least 2 images (one to train on, one to validate); add "
            "images, or give a separate data.eval_folder."
        )
    rng = np.random.default_rng(_SPLIT_SEED)
    is_eval = np.zeros(len(labels), bool)
    for c in range(len(index.class_names)):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_eval = min(max(int(round(eval_fraction * len(members))), 1), len(members) - 1)
        is_eval[members[:n_eval]] = True
    train = index.subset(np.flatnonzero(~is_eval))
    return dataclasses.replace(train, skipped=index.skipped), index.subset(np.flatnonzero(is_eval))


_scanned: dict[str, tuple[FolderIndex, list]] = {}  # Per process: the index, the nested times.
INDEX_FILE_PREFIX = "folder-index-"


def _root(path: str | os.PathLike) -> epath.Path:
    return epath.Path(path) if storage.is_remote(path) else epath.Path(path).expanduser()


def _signature(root: epath.Path, check: str) -> list:
    """What a cached index is valid for: the folder, the check, and the modification times of
    the folder and its class subfolders (adding or removing an image changes them; a bucket's
    folders have none, so there only the class names count)."""
    dirs = [root, *sorted(d for d in root.iterdir() if d.is_dir())]
    where = str(root) if storage.is_remote(root) else str(root.resolve())
    return [where, check, [[d.name, storage.stat(d)[1]] for d in dirs]]


def _nested(root: epath.Path) -> list:
    """[folder, modification time] of every folder below the class subfolders (an image added
    to ``<class>/<sub>/`` changes only its own folder's); none for a bucket's prefixes."""
    if storage.is_remote(root):
        return []
    classes = sorted(str(d) for d in root.iterdir() if d.is_dir())
    found = [f"{top}/{d}" for c in classes for top, dirs, _ in storage.walk(c) for d in dirs]
    return [[d, storage.stat(d)[1]] for d in sorted(found)]


def _unchanged(nested: list) -> bool:
    try:
        return all(storage.stat(d)[1] == mtime for d, mtime in nested)
    except FileNotFoundError:
        return False


def cached_scan(
    path: str | os.PathLike,
    *,
    check: str = "header",
    cache_dir: str | os.PathLike | None = None,
    write: bool = True,
) -> FolderIndex:
    """``scan_folder`` once per process, and once per folder state when ``cache_dir`` (a run's
    workdir) keeps the index (``write``): later runs and hosts read it instead of scanning."""
    root = _root(path)
    if not root.is_dir():
        return scan_folder(root, check=check)  # Raises its clear error.
    signature = _signature(root, check)
    key = json.dumps(signature)
    file, stored = None, {}
    if cache_dir is not None:
        digest = hashlib.sha1(json.dumps(signature[:2]).encode()).hexdigest()[:16]
        file = epath.Path(cache_dir) / f"{INDEX_FILE_PREFIX}{digest}.json"
        try:
            stored = json.loads(file.read_text()) if file.exists() else {}
        except ValueError:
            stored = {}
    index, nested = _scanned.get(key) or (None, None)
    if index is not None and not _unchanged(nested):
        index = None
    if index is None and stored.get("signature") == signature:
        nested = stored["nested"] if "nested" in stored else _nested(root)  # Older indexes.
        if _unchanged(nested):
            fields = ("files", "labels", "class_names")
            index = FolderIndex(*(tuple(stored[f]) for f in fields), stored["skipped"])
    if index is None:
        nested = _nested(root)  # Before the scan: a change during it shows next time.
        index = scan_folder(root, check=check)
    _scanned[key] = index, nested
    if (
        file is not None
        and write
        and [stored.get(k) for k in ("signature", "nested")] != [signature, nested]
    ):
        try:  # A cache: hosts may write it at once (each its own temp name), or fail to.
            record = {"signature": signature, "nested": nested, **dataclasses.asdict(index)}
            storage.write_atomically(file, json.dumps(record))
        except OSError as e:
            logging.warning("Could not keep the folder index in %s (%s); it is rebuilt.", file, e)
    return index
