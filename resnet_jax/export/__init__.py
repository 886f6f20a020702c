"""Deployment: a checkpoint as StableHLO, ONNX and LiteRT (float32 and int8) files."""

from resnet_jax.export.exporter import (
    DEFAULT_FORMATS,
    FILES,
    ExportError,
    export_checkpoint,
    export_predictor,
)

__all__ = ["DEFAULT_FORMATS", "FILES", "ExportError", "export_checkpoint", "export_predictor"]
