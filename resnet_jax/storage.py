"""Every file the project reads or writes goes through ``etils.epath``: a local path or a
``gs://bucket/...`` one works wherever the other does.

gs:// goes through gcsfs (fsspec), not TensorFlow's file system, so training hosts need no
TensorFlow; orbax writes checkpoint arrays to gs:// itself, with tensorstore. Both read the
usual Google Cloud credentials (on a Cloud TPU VM: the VM's service account).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

os.environ.setdefault("EPATH_USE_TF", "false")  # Before etils first picks a gs:// backend.

from etils import epath  # noqa: E402

PathLike = str | os.PathLike
EMULATOR = "STORAGE_EMULATOR_HOST"  # A local GCS API server (tests) needs no credentials.


def path(p: PathLike) -> epath.Path:
    """``p`` as an ``epath.Path``; a local path is made absolute, so that messages say where."""
    p = epath.Path(p)
    return p if is_remote(p) else epath.Path(os.path.abspath(p))


def is_remote(p: PathLike) -> bool:
    return "://" in os.fspath(p)


def walk(root: PathLike) -> Iterator[tuple[str, list[str], list[str]]]:
    """``os.walk(root, followlinks=True)`` for a local or gs:// folder: (folder as a full path,
    subfolders, files); sorting the subfolders in place orders the walk, as with ``os.walk``."""
    text = os.fspath(root)
    if not is_remote(text):
        yield from os.walk(text, followlinks=True)
        return
    scheme = text.split("://")[0]
    for folder, dirs, files in epath.Path(text).walk():  # fsspec's folders lack the scheme.
        yield f"{scheme}://{os.fspath(folder)}", dirs, files


def stat(p: PathLike) -> tuple[int, int]:
    """(size in bytes, modification time) of a local or gs:// file: nanoseconds for local files;
    seconds in a bucket, where folders are name prefixes and have none (0)."""
    if is_remote(p):
        info = epath.Path(p).stat()
        return info.length or 0, info.mtime
    info = os.stat(p)
    return info.st_size, info.st_mtime_ns


def remote_problem(p: PathLike, flag: str) -> str | None:
    """Why the bucket of a gs:// ``p`` cannot be used (no credentials, no such bucket), said in
    one line naming ``flag`` and what to set; None for local paths and usable buckets.

    Checked before a run starts: otherwise the first sign is a storage library's traceback from
    the first write, deep inside a checkpoint save.
    """
    text = os.fspath(p)
    if not text.startswith("gs://"):
        return None if not is_remote(text) else f"{flag}={text}: only gs:// remote paths work."
    bucket = text[len("gs://") :].split("/")[0]
    if not os.environ.get(EMULATOR):
        import google.auth
        import google.auth.exceptions

        try:
            google.auth.default()
        except google.auth.exceptions.DefaultCredentialsError:
            return (
                f"{flag}={text} needs Google Cloud credentials, and none were found. On a Cloud "
                "TPU or GCE VM the VM's service account is used; elsewhere run `gcloud auth "
                "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS to a "
                "service-account key file."
            )
    try:
        found = epath.Path(f"gs://{bucket}").exists()
    except OSError as e:  # PermissionError etc. from gcsfs: the bucket exists but is not ours.
        return f"{flag}={text}: bucket gs://{bucket} cannot be read with these credentials ({e})."
    if not found:
        return (
            f"{flag}={text}: bucket gs://{bucket} does not exist (or these credentials cannot see "
            f"it). Create it (`gcloud storage buckets create gs://{bucket}`) or fix the path."
        )
    return None


def copy_into(p: PathLike, folder: PathLike) -> epath.Path:
    """A copy of file ``p`` (e.g. in a bucket) in ``folder`` under its own name, for libraries
    that open local files only (the suffix often names the format)."""
    source = epath.Path(p)
    local = epath.Path(folder) / source.name
    local.write_bytes(source.read_bytes())
    return local


def write_atomically(p: PathLike, data: str | bytes) -> None:
    """Replaces the file ``p`` whole, never half-way: locally a temporary file beside it (one per
    process) moved into place; on gs:// one upload, which replaces the object in one piece."""
    p = epath.Path(p)
    data = data.encode() if isinstance(data, str) else data
    p.parent.mkdir(parents=True, exist_ok=True)
    if is_remote(p):  # GCS has no renames.
        p.write_bytes(data)
        return
    tmp = p.with_name(f".{p.name}.tmp-{os.getpid()}")
    try:
        tmp.write_bytes(data)
        tmp.replace(p)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_figure(fig, p: PathLike) -> epath.Path:
    """Writes a matplotlib figure as PNG to ``p`` (local or gs://); returns the path."""
    p = path(p)
    with p.open("wb") as f:
        fig.savefig(f, format="png", dpi=100)
    return p
