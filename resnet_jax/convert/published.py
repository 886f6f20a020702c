"""Published weight files recognised offline, by hash and by name, so they keep their preset.

torchvision's weights enums and timm's pretrained cfgs give each published file a URL whose
name holds the first hex digits of the file's sha256 (torch.hub's ``check_hash``
convention: ``resnet50-11ad3fa6.pth``). timm's Hugging Face files carry no hash in timm's
registry; they are known by their tag (``resnet50d.a1_in1k.safetensors``) alone.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Sequence
from typing import Any

from etils import epath

from resnet_jax.data.presets import PRESETS, Preset


@dataclasses.dataclass(frozen=True)
class PublishedFile:
    file_name: str  # 'resnet50-11ad3fa6.pth', 'resnet50d.a1_in1k.safetensors'
    sha256_prefix: str | None  # from the file name; None where the registry records no hash
    weights: str  # 'torchvision ResNet50_Weights.IMAGENET1K_V2', 'timm resnet50d.a1_in1k'
    key: Any  # the registry's handle: a torchvision enum entry, a timm tag


def from_url(url: str, weights: str, key: Any) -> PublishedFile:
    """The file a registry URL names, with the sha256 prefix its name carries (if any)."""
    from torch.hub import HASH_REGEX

    name = os.path.basename(url)
    match = HASH_REGEX.search(name)
    return PublishedFile(name, (match.group(1) if match else None) or None, weights, key)


def file_sha256(path: str | os.PathLike) -> str:
    with epath.Path(path).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def recognise(
    path: str | os.PathLike, published: Sequence[PublishedFile]
) -> tuple[PublishedFile | None, list[str]]:
    """The published file ``path`` is, and warnings.

    A file whose sha256 starts with a published prefix is that file, whatever its name; one
    named like a hashed published file whose sha256 differs is unknown, with a warning; a
    name the registry records no hash for is trusted.
    """
    name = epath.Path(path).name
    hashed = [p for p in published if p.sha256_prefix]
    digest = file_sha256(path) if hashed else ""
    for p in hashed:
        if digest.startswith(p.sha256_prefix):
            return p, []
    warnings = []
    for p in published:
        if p.file_name != name:
            continue
        if p.sha256_prefix is None:
            return p, []
        warnings.append(
            f"{path} is named like the published {p.weights} file but its sha256 begins "
            f"{digest[: len(p.sha256_prefix)]}, not {p.sha256_prefix}: treated as an unknown "
            "file (a modified or truncated download?)."
        )
    return None, warnings


def describe(preset: Preset) -> str:
    """'preset NAME (resize R, crop C, INTERPOLATION)': what the user checks a preset by."""
    return (
        f"preset {preset.name} (resize {preset.resize}, crop {preset.crop}, {preset.interpolation})"
    )


def file_note(
    path: str | os.PathLike, preset: Preset, known: PublishedFile | None, why: str
) -> str:
    """How a weights file's preset was chosen: the published file it is, or, none of them
    (``why`` names the published files), how to choose another."""
    if known is None:
        return (
            f"{describe(preset)} assumed: {path} is none of the published files ({why}); if "
            f"its weights expect other preprocessing, choose it with --preset NAME, one of "
            f"{', '.join(sorted(PRESETS))}."
        )
    how = (
        f"its sha256 begins {known.sha256_prefix} as {known.file_name}'s does"
        if known.sha256_prefix
        else f"by its name; the registry records no hash for {known.file_name}"
    )
    return f"{describe(preset)}: {path} is the published {known.weights} ({how})."
