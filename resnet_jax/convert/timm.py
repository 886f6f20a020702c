"""timm ResNets -> Flax: resnet18..152 (torchvision layout) and the ResNet-D family.

timm's ``resnet50d`` has a deep stem (``conv1.0/.3/.6`` + BNs) and an average-pool
shortcut (``downsample.1/.2``); the layout follows the model, so one function serves both.

    variables = from_timm(timm.create_model("resnet50d"), "resnet50d")
"""

from __future__ import annotations

import math
from typing import Any

from etils import epath

from resnet_jax.convert.published import PublishedFile, describe, file_note, from_url, recognise
from resnet_jax.convert.reference import (
    Reference,
    download,
    preset_from_values,
    randomize_torch_batchnorm,
    torch_runner,
)
from resnet_jax.convert.torch_compat import import_timm, load_torch_file
from resnet_jax.convert.torchvision import from_torchvision

TIMM_MODELS = tuple(f"resnet{d}{s}" for s in ("", "d") for d in (18, 34, 50, 101, 152))


from_timm = from_torchvision  # One layout: torch_layout follows the model (plain or ResNet-D).


def check_model_name(name: str) -> None:
    if name not in TIMM_MODELS:
        raise ValueError(
            f"timm ResNets converted here: {', '.join(TIMM_MODELS)}; got {name!r} "
            f"(Wide ResNet and ResNeXt come from --source torchvision)."
        )


def preset_for(model: Any) -> Any:
    """The evaluation preprocessing timm publishes with the weights (its pretrained_cfg)."""
    from timm.data import resolve_data_config

    cfg = resolve_data_config({}, model=model)
    crop = cfg["input_size"][-1]
    return preset_from_values(
        "timm",
        math.floor(crop / cfg["crop_pct"]),
        crop,
        cfg["interpolation"],
        tuple(cfg["mean"]),
        tuple(cfg["std"]),
    )


def published_name(name: str, weights: str) -> str:
    """'a1_in1k' or 'resnet50.a1_in1k' -> 'resnet50.a1_in1k', checked against timm's list."""
    full = weights if "." in weights else f"{name}.{weights}"
    known = import_timm().list_pretrained(f"{name}.*")
    if full not in known:
        raise ValueError(
            f"{weights!r} is neither a file nor published timm weights for {name}; published: "
            f"{', '.join(k.split('.', 1)[1] for k in known)}."
        )
    return full


# Names a Hugging Face file goes by once saved as its tag says: resnet50d.a1_in1k.safetensors.
TAG_SUFFIXES = (".safetensors", ".pth", ".bin")


def published_files(name: str) -> list[PublishedFile]:
    """timm's published files for ``name``: each tag's Hugging Face file saved under the tag's
    name (timm records no hash for those) and the release file its cfg's URL names (hashed)."""
    timm = import_timm()
    files = []
    for tag in timm.list_pretrained(f"{name}.*"):
        files += [PublishedFile(tag + s, None, f"timm {tag}", tag) for s in TAG_SUFFIXES]
        url = timm.models.get_pretrained_cfg(tag).url
        if url:
            files.append(from_url(url, f"timm {tag}", tag))
    return files


def build_reference(name: str, weights: str | None = None, seed: int = 0) -> Reference:
    """timm's model from a file, a published tag (resnet50.a1_in1k) or a seeded random init
    with randomised BN statistics, and its conversion."""
    import torch

    check_model_name(name)
    timm = import_timm()
    torch.manual_seed(seed)
    warnings = []
    if weights is None:
        model = timm.create_model(name, pretrained=False)
        preset = preset_for(model)
        randomize_torch_batchnorm(model, seed, preset)
        label, source = f"random (seed {seed})", model
        tag = f"{name}.{model.pretrained_cfg.get('tag')}"
        note = f"{describe(preset)}: the preprocessing of timm {tag} (timm's default)"
    elif epath.Path(weights).exists():
        source = load_torch_file(weights)
        known, warnings = recognise(weights, published_files(name))
        # A recognised file's tag brings its pretrained cfg, and so its preprocessing.
        model = timm.create_model(known.key if known else name, pretrained=False)
        label = f"{weights} = {known.key}" if known else str(weights)
        preset = preset_for(model)
        tags = ", ".join(t.split(".", 1)[1] for t in timm.list_pretrained(f"{name}.*"))
        why = (
            f"timm {name}: {name}.TAG.safetensors (or .pth) with TAG one of {tags}, or a release "
            f"file a tag's cfg names; this preset is that of timm's default {name} weights, "
            f"{model.pretrained_cfg.get('tag')}"
        )
        note = file_note(weights, preset, known, why)
    else:
        label = published_name(name, weights)
        model = source = download(
            lambda: timm.create_model(label, pretrained=True),
            f"timm weights {label}",
            f"the Hugging Face Hub (timm/{label})",
            f"--weights /path/to/{label}.safetensors: the model.safetensors of "
            f"https://huggingface.co/timm/{label} saved under that name, which tells its "
            "preprocessing",
        )
        preset = preset_for(model)
        note = f"{describe(preset)}: the preprocessing of timm {label}"
    variables = from_timm(source, name)  # checks every key before torch sees them
    if source is not model:
        model.load_state_dict(source)
    return Reference(
        "timm", name, label, preset, variables, torch_runner(model), model, note, tuple(warnings)
    )
