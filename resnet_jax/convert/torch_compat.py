"""Importing PyTorch-side packages and reading PyTorch weight files safely.

The torchvision wheel on the package index is a CUDA build; with a CPU-only torch its
compiled ops library fails to load and importing torchvision stops at the fake-tensor
registration of ``torchvision::nms``. Defining the two op schemas first lets
``torchvision.models`` (and so timm) import; where torchvision imports normally this is a
no-op. Weight files are read with ``torch.load(weights_only=True)`` or safetensors, never
with plain unpickling, so a file cannot run code.
"""

from __future__ import annotations

import importlib
import importlib.util
import io
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from etils import epath

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_LIBRARY: Any = None  # kept alive: dropping a torch.library.Library unregisters its ops


class UnsafeCheckpointError(ValueError):
    """A PyTorch file whose pickle would run code (or otherwise not plain tensors)."""


def _ops_library_loads() -> bool:
    """Whether torchvision's compiled ops (which define ``torchvision::nms``) load here."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(
            "torchvision is not installed: pip install -e '.[reference]' (in the resnet-jax "
            "checkout)",
            name="torchvision",
        )
    for lib in sorted(Path(spec.origin).parent.glob("_C*")):
        if lib.suffix in (".so", ".pyd", ".dylib"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except OSError:
                return False
    return False


def import_torchvision() -> ModuleType:
    """Imports torchvision, first defining its op schemas if its compiled ops cannot load."""
    global _LIBRARY
    if "torchvision" in sys.modules:
        return sys.modules["torchvision"]
    import torch

    if _LIBRARY is None and not _ops_library_loads():
        _LIBRARY = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS.values():
            _LIBRARY.define(schema)
    return importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """Imports timm (which imports torchvision) through the same compatibility shim."""
    import_torchvision()
    return importlib.import_module("timm")


def load_torch_file(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a state_dict from ``.safetensors`` or from ``.pth``/``.pt``/``.bin`` safely.

    A ``.pth`` is loaded with ``weights_only=True``: only tensors and plain containers are
    unpickled, and a pickle that would call anything else is refused.
    """
    path = epath.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No such weights file: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load

        return dict(load(path.read_bytes()))
    import torch

    try:
        obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError (or RuntimeError in old versions)
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            raise UnsafeCheckpointError(
                f"Refused to load {path}: its pickle holds more than tensors (it would import "
                f"or call code), so it is not read. Only plain state_dicts load with "
                f"weights_only=True; save the weights with torch.save(model.state_dict(), ...) or "
                f"as .safetensors. Details: {str(e).splitlines()[0]}"
            ) from None
        raise
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: Any, origin: Any = "checkpoint") -> dict[str, Any]:
    """Finds the state_dict in common training-checkpoint wrappers ('state_dict', 'model')."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model", "model_state_dict", "module"):
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner:
                return unwrap_state_dict(inner, origin)
        sd = {str(k): v for k, v in obj.items()}
        if all(k.startswith("module.") for k in sd):  # saved from DataParallel/DDP
            sd = {k[len("module.") :]: v for k, v in sd.items()}
        return sd
    raise ValueError(f"{origin} holds a {type(obj).__name__}, not a state_dict (a mapping).")


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Tensors to NumPy (bf16/fp16 widened to float32), skipping non-tensor entries."""
    import torch

    out = {}
    for key, value in state_dict.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            if value.is_floating_point() and value.dtype != torch.float64:
                value = value.float()
            out[key] = value.numpy()
        elif isinstance(value, np.ndarray):
            out[key] = value
    return out
