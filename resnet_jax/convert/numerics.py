"""Numerics check of a conversion: build a reference in its own framework, convert it, compare
block by block.

Both frameworks get the same preprocessed float32 inputs (random pixels and photographs)
with full-precision matmuls: JAX 'highest', PyTorch without TF32.
"""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

import numpy as np

from resnet_jax.build import model_from_name
from resnet_jax.convert.compare import Comparison, compare, flax_activations
from resnet_jax.convert.inputs import photo_inputs, random_inputs, sample_photographs
from resnet_jax.convert.published import describe
from resnet_jax.convert.reference import Reference
from resnet_jax.data.presets import Preset

SOURCES = {
    "torchvision": "resnet_jax.convert.torchvision",
    "timm": "resnet_jax.convert.timm",
    "keras": "resnet_jax.convert.keras_reference",
}
# The packages of the 'reference' extra (pyproject.toml) that building a reference imports.
REFERENCE_PACKAGES = ("torch", "torchvision", "timm", "keras", "h5py", "safetensors")
INSTALL_HINT = "pip install -e '.[reference]' (in the resnet-jax checkout)"


def build_reference(
    source: str, model: str, weights: str | None = None, seed: int = 0
) -> Reference:
    """The reference model of ``source`` ('torchvision', 'timm', 'keras') and its conversion."""
    if source not in SOURCES:
        raise ValueError(f"Unknown source {source!r}; expected one of {', '.join(SOURCES)}.")
    try:
        return importlib.import_module(SOURCES[source]).build_reference(model, weights, seed)
    except ModuleNotFoundError as e:
        if e.name not in REFERENCE_PACKAGES:
            raise
        raise ModuleNotFoundError(
            f"--source {source} needs {e.name}, which is not installed; install the reference "
            f"frameworks with: {INSTALL_HINT}",
            name=e.name,
        ) from e


@dataclasses.dataclass(frozen=True)
class Inputs:
    x: np.ndarray  # NHWC float32, model inputs
    labels: list[str]


def make_inputs(
    preset: Preset,
    size: int,
    n_random: int = 2,
    images: list[str | Path] | None = None,
    seed: int = 0,
) -> Inputs:
    """``n_random`` random images then the photographs, preprocessed by ``preset``."""
    parts, labels = [], []
    if n_random:
        parts.append(random_inputs(n_random, size, preset, seed))
        labels += [f"random {i}" for i in range(n_random)]
    paths = [Path(p) for p in images] if images is not None else sample_photographs()
    if paths:
        parts.append(photo_inputs(preset, size, paths))
        labels += [p.name for p in paths]
    if not parts:
        raise ValueError("No inputs: ask for random inputs or give photographs.")
    return Inputs(np.concatenate(parts), labels)


def run_comparison(reference: Reference, inputs: Inputs, tolerance: float = 1e-4) -> Comparison:
    """Runs the reference and the converted Flax model on the same inputs; the table."""
    size = inputs.x.shape[1]
    ours = flax_activations(model_from_name(reference.model_name), reference.variables, inputs.x)
    theirs = reference.run(inputs.x)
    precision = "JAX matmul precision 'highest'"
    if reference.source in ("torchvision", "timm"):
        precision += ", PyTorch TF32 off"
    title = (
        f"{reference.model_name}: {reference.source} ({reference.weights}) vs resnet_jax, "
        f"{size}x{size}, float32, preset {reference.preset.name}, {precision}"
    )
    return compare(ours, theirs, inputs.labels, tolerance, title, size)


def verify(
    source: str,
    model: str,
    weights: str | None = None,
    image_size: int | None = None,
    tolerance: float = 1e-4,
    n_random: int = 2,
    images: list[str | Path] | None = None,
    seed: int = 0,
    preset: Preset | None = None,
) -> tuple[Reference, Comparison]:
    """One verification run, end to end: reference, conversion, inputs, comparison."""
    reference = build_reference(source, model, weights, seed)
    if preset is not None:
        note = f"{describe(preset)}, as chosen (instead of {reference.preset.name})"
        reference = dataclasses.replace(reference, preset=preset, preset_note=note)
    size = image_size or reference.preset.crop
    inputs = make_inputs(reference.preset, size, n_random, images, seed)
    return reference, run_comparison(reference, inputs, tolerance)
