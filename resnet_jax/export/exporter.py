"""A checkpoint (training workdir or converted weights) as deployable files in one folder:

    model.stablehlo        jax.export, symbolic batch
    model.onnx             ONNX, dynamic batch
    model_float32.tflite   LiteRT float32
    model_int8.tflite      LiteRT full-integer int8 (needs a calibration folder of images)
    export.json            preprocessing preset, class names, input shape, checks

Everything is checked first and written to a temporary folder beside the output, which is
renamed into place at the end: a failure leaves nothing behind. A gs:// output (no renames there)
is written and checked in a local folder, then uploaded file by file, export.json (which names
the files) last: a failed upload into a new folder deletes what it uploaded, so a retry works.
With overwrite, the old export.json is deleted first, old files the new export lacks only after
the upload: a failure leaves the folder without export.json, recognisably incomplete.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from importlib.util import find_spec
from typing import Any

import jax
import numpy as np
from etils.epath import Path

from resnet_jax import storage
from resnet_jax.convert.compare import relative_difference
from resnet_jax.export import formats, runtime
from resnet_jax.images import batches, list_images
from resnet_jax.inference import Predictor

FILES = {
    "stablehlo": "model.stablehlo",
    "onnx": "model.onnx",
    "litert": "model_float32.tflite",
    "litert_int8": "model_int8.tflite",
}
DEFAULT_FORMATS = ("stablehlo", "onnx", "litert")
# The modules each format is converted and checked with (the `export` extra and TensorFlow).
NEEDS = {
    "onnx": ("jax2onnx", "onnx", "onnxruntime"),
    "litert": ("tensorflow", "ai_edge_litert"),
    "litert_int8": ("tensorflow", "ai_edge_litert"),
}
CHECK_IMAGES = 8


class ExportError(ValueError):
    """Bad input, or a failed upload: says what was wrong, what was left and what to do."""


def check_formats(names: Sequence[str], calibration: str | os.PathLike | None) -> tuple[str, ...]:
    unknown = sorted(set(names) - set(FILES))
    if unknown:
        raise ExportError(f"Unknown export format(s) {unknown}; choose from {', '.join(FILES)}.")
    if "litert_int8" in names and calibration is None:
        raise ExportError(
            "litert_int8 needs a calibration folder of images (--calibration "
            "FOLDER), e.g. a few hundred training images."
        )
    missing = sorted({m for n in names for m in NEEDS.get(n, ()) if find_spec(m) is None})
    if missing:
        raise ExportError(
            f"Exporting {', '.join(names)} needs {', '.join(missing)}, which is not installed: "
            "pip install 'resnet-jax[export]'."
        )
    return tuple(dict.fromkeys(names))


def check_output_folder(output: str | os.PathLike, overwrite: bool) -> Path:
    """The output folder: new, empty, or (with ``overwrite``) to be replaced at the end."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ExportError(f"{output} is a file; give --output a folder (new or empty).")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise ExportError(
            f"{output} exists and is not empty; choose a new folder or pass --overwrite."
        )
    return output


def load_calibration(folder: str | os.PathLike, predictor: Predictor, samples: int) -> np.ndarray:
    """Up to ``samples`` images spread evenly over the sorted folder, preprocessed as the model
    expects; any unreadable file among them is an error (the set would silently shrink)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExportError(
            f"Calibration folder {folder} does not exist; give --calibration a "
            "folder of images like the model's inputs (e.g. training images)."
        )
    paths = list_images([folder])
    if not paths:
        raise ExportError(f"Calibration folder {folder} holds no image files.")
    pick = np.unique(np.linspace(0, len(paths) - 1, min(samples, len(paths))).astype(int))
    skipped: list[tuple[str, str]] = []
    images = [b for _, b in batches([paths[i] for i in pick], predictor.preset, 64, skipped)]
    if skipped:
        shown = "; ".join(why for _, why in skipped[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        raise ExportError(
            f"Calibration folder {folder} has {len(skipped)} unreadable file(s): "
            f"{shown}{more}. Remove them or choose another folder."
        )
    return np.concatenate(images)


def _logits_fn(predictor: Predictor):
    model, variables = predictor.model, jax.device_get(predictor.variables)
    if not model.include_top:
        raise ExportError(
            "The model has no classifier head (include_top=False); export "
            "writes image -> logits programs."
        )
    return lambda x: model.apply(variables, x)


def _check(path: Path, name: str, images: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """The written file run on ``images`` against the JAX model's logits."""
    if name == "stablehlo":
        exported = jax.export.deserialize(bytearray(path.read_bytes()))
        logits = np.asarray(exported.call(images))
    else:
        logits = runtime.open_runner(path)(images)
    agree = float(np.mean(logits.argmax(-1) == reference.argmax(-1)))
    return {
        "images": len(images),
        "max_relative_difference": relative_difference(logits, reference),
        "top1_agreement": agree,
    }


def _upload(tmp: Path, output: Path, overwrite: bool) -> None:
    """The checked files of ``tmp`` into the gs:// folder ``output``, as the module says."""
    names = [*sorted(f.name for f in tmp.iterdir() if f.name != runtime.METADATA), runtime.METADATA]
    stale = [f for f in output.iterdir() if f.name not in names] if output.exists() else []
    if overwrite:  # Before any new file: the folder no longer claims to hold a complete export.
        (output / runtime.METADATA).unlink(missing_ok=True)
    sent = []
    try:
        for name in names:
            if name == runtime.METADATA:
                for f in stale:
                    f.rmtree() if f.is_dir() else f.unlink()
            sent.append(output / name)
            sent[-1].write_bytes((tmp / name).read_bytes())
    except Exception as e:
        if overwrite:
            raise ExportError(
                f"Uploading the export to {output} failed ({e}); the folder is incomplete (it has "
                "no export.json): run the export again with --overwrite."
            ) from e
        left = "what it uploaded is deleted: run the export again."
        try:
            for f in sent:
                f.unlink(missing_ok=True)
        except Exception:
            left = f"deleting what it uploaded failed too: delete {output}, then export again."
        raise ExportError(f"Uploading the export to {output} failed ({e}); {left}") from e


def export_predictor(
    predictor: Predictor,
    output: str | os.PathLike,
    formats_: Sequence[str] = DEFAULT_FORMATS,
    *,
    calibration: str | os.PathLike | None = None,
    calibration_samples: int = 200,
    source: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Writes the predictor's model in ``formats_`` with export.json into ``output``."""
    names = check_formats(formats_, calibration)
    output = check_output_folder(output, overwrite)
    calib = load_calibration(calibration, predictor, calibration_samples) if calibration else None
    fn = _logits_fn(predictor)
    size, channels = predictor.preset.crop, predictor.model.in_channels
    check = (
        calib[:CHECK_IMAGES]
        if calib is not None
        else np.random.default_rng(0)
        .normal(size=(CHECK_IMAGES, size, size, channels))
        .astype(np.float32)
    )
    reference = np.asarray(jax.jit(fn)(check))

    output.parent.mkdir(parents=True, exist_ok=True)
    remote = storage.is_remote(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=None if remote else output.parent))
    try:
        checks = {}
        for name in names:
            if name == "stablehlo":
                blob = formats.stablehlo(fn, size, channels)
            elif name == "onnx":
                blob = formats.onnx(fn, size, channels)
            else:
                blob = formats.litert(fn, size, channels, calib if name == "litert_int8" else None)
            (tmp / FILES[name]).write_bytes(blob)
            checks[name] = _check(tmp / FILES[name], name, check, reference)
        metadata = {
            "format": "resnet_jax.export",
            "source": source,
            "files": {n: FILES[n] for n in names},
            "input": {
                "shape": ["batch", size, size, channels],
                "dtype": "float32",
                "layout": "NHWC",
                "name": "images",
            },
            "output": "logits",
            "num_classes": predictor.model.num_classes,
            "preset": predictor.preset.to_dict(),
            "class_names": list(predictor.class_names) if predictor.class_names else None,
            "calibration": {"folder": str(calibration), "images": len(calib)}
            if calib is not None
            else None,
            "checks": checks,
            "jax_version": jax.__version__,
        }
        (tmp / runtime.METADATA).write_text(json.dumps(metadata, indent=1))
        if remote:
            _upload(tmp, output, overwrite)
        else:
            if output.exists():
                output.rmtree()
            tmp.replace(output)
    finally:
        tmp.rmtree(missing_ok=True)
    return output


def export_checkpoint(
    checkpoint: str | os.PathLike,
    output: str | os.PathLike,
    formats_: Sequence[str] = DEFAULT_FORMATS,
    **kwargs: Any,
) -> Path:
    """``export_predictor`` on a training workdir or converted checkpoint, loaded as predict
    loads it (``resnet_jax.load``)."""
    from resnet_jax.inference import load_predictor

    check_formats(formats_, kwargs.get("calibration"))
    check_output_folder(output, kwargs.get("overwrite", False))
    try:
        predictor = load_predictor(checkpoint)
    except FileNotFoundError as e:
        raise ExportError(f"{e} Give a training workdir or a converted checkpoint.") from None
    except ValueError as e:
        if "Unknown model" not in str(e):
            raise
        raise ExportError(
            f"{checkpoint}: its architecture is not one resnet-jax builds. {e} "
            "Nothing was exported."
        ) from None
    return export_predictor(predictor, output, formats_, source=str(checkpoint), **kwargs)
