"""Running exported ONNX and LiteRT files, and predicting with them as with a checkpoint.

    python -m resnet_jax.predict photos/ --checkpoint exported/model.onnx

The preprocessing preset and class names come from ``export.json`` beside the file.
onnxruntime and ai-edge-litert are imported only when such a file is opened.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import numpy as np
from etils.epath import Path

from resnet_jax.data.presets import Preset, get_preset
from resnet_jax.inference import Predictor

METADATA = "export.json"
SUFFIXES = (".onnx", ".tflite")


class OnnxRunner:
    """An ONNX file in onnxruntime on the CPU: float32 images (N, H, W, C) -> logits."""

    def __init__(self, path: str | os.PathLike):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        # Idle worker threads sleep instead of spinning: on a shared CPU they would take cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        model = Path(path).read_bytes()
        self._session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0].name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self._session.run(None, {self._input: np.asarray(images, np.float32)})[0]


class LiteRTRunner:
    """A .tflite file in the LiteRT interpreter: float32 images -> float32 logits; an int8
    model's input is quantised and its output dequantised with the scales it carries.

    The exported files take one image per call, as on-device models do (their shapes are
    fixed so the converter folds them); a batch runs as one call per image.
    """

    def __init__(self, path: str | os.PathLike):
        from ai_edge_litert.interpreter import Interpreter

        self._interpreter = Interpreter(model_content=Path(path).read_bytes())
        self._interpreter.allocate_tensors()
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]

    def _one(self, image: np.ndarray) -> np.ndarray:
        it, inp = self._interpreter, self._input
        x = image[None]
        if inp["dtype"] == np.int8:
            scale, zero = inp["quantization"]
            x = np.clip(np.round(x / scale + zero), -128, 127).astype(np.int8)
        it.set_tensor(inp["index"], x)
        it.invoke()
        y = it.get_tensor(self._output["index"])[0]
        if self._output["dtype"] == np.int8:
            scale, zero = self._output["quantization"]
            y = (y.astype(np.float32) - zero) * scale
        return np.array(y, np.float32)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return np.stack([self._one(x) for x in np.asarray(images, np.float32)])


def open_runner(path: str | os.PathLike):
    """An OnnxRunner or LiteRTRunner by file suffix."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model file.")
    try:
        if path.suffix == ".onnx":
            return OnnxRunner(path)
        if path.suffix == ".tflite":
            return LiteRTRunner(path)
    except ImportError as e:
        raise ValueError(
            f"Running {path.name} needs {e.name}, which is not installed: "
            "pip install 'resnet-jax[export]'."
        ) from None
    raise ValueError(f"{path}: not an exported model; expected a {' or '.join(SUFFIXES)} file.")


def read_metadata(model_file: str | os.PathLike) -> dict[str, Any]:
    """``export.json`` of the folder that holds ``model_file``."""
    path = Path(model_file).parent / METADATA
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: predict reads the preprocessing preset and class names of "
            f"{Path(model_file).name} from it; keep the file beside it as export wrote it."
        )
    return json.loads(path.read_text())


@dataclasses.dataclass(frozen=True)
class _Head:
    include_top: bool = True


@dataclasses.dataclass
class ExportedPredictor(Predictor):
    """A Predictor whose forward pass is an exported file (top-k labels only)."""

    runner: Any = None

    def __post_init__(self):
        def forward(_, images):
            logits = self.runner(np.asarray(images))
            z = np.exp(logits - logits.max(-1, keepdims=True))
            return z / z.sum(-1, keepdims=True), None

        self._forward = forward

    def check_can_embed(self) -> None:
        raise ValueError(
            "An exported model gives logits only; extract features with the "
            "checkpoint it was exported from."
        )


def load_exported_predictor(
    path: str | os.PathLike, preset: str | None = None, batch_size: int = 32
) -> ExportedPredictor:
    """A Predictor over an exported .onnx or .tflite file, fed as export.json says."""
    metadata = read_metadata(path)
    chosen = get_preset(preset) if preset else Preset.from_dict(metadata["preset"])
    return ExportedPredictor(
        _Head(), {}, chosen, metadata.get("class_names"), batch_size, runner=open_runner(path)
    )
