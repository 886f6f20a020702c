"""A reference model in its own framework, with its converted Flax variables.

``run`` maps one NHWC float32 batch to the activations the comparison table lists, all in
NHWC: 'stem', every block ('layer1_0', ...), 'post_bn' (v2), 'pooled' and 'logits'. The
PyTorch runner uses forward hooks; the Keras runner lives in ``keras.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np

from resnet_jax.convert.common import Variables
from resnet_jax.data.presets import Preset

Activations = dict[str, np.ndarray]
T = TypeVar("T")


@dataclasses.dataclass
class Reference:
    source: str  # 'torchvision' | 'timm' | 'keras'
    model_name: str  # our registry name
    weights: str  # 'random (seed 0)', a file path or a published name
    preset: Preset
    variables: Variables
    run: Callable[[np.ndarray], Activations]
    model: Any = None  # the framework's own model object
    preset_note: str = ""  # how the preset was chosen, for the user
    warnings: tuple[str, ...] = ()  # e.g. a file named like published weights, hash differing


class WeightsDownloadError(RuntimeError):
    """Published weights could not be fetched (offline?); says what and how to pass a file."""

    def __init__(self, what: str, where: str, local_hint: str, cause: BaseException):
        super().__init__(
            f"Could not download {what} from {where}: {type(cause).__name__}: {cause}\n"
            f"Without network access, download the file elsewhere and pass it instead: "
            f"{local_hint}"
        )


def download(fetch: Callable[[], T], what: str, where: str, local_hint: str) -> T:
    """``fetch()``, its failure a WeightsDownloadError saying what to pass instead."""
    try:
        return fetch()
    except Exception as e:
        raise WeightsDownloadError(what, where, local_hint, e) from e


def disable_torch_tf32() -> None:
    """float32 matmuls and convolutions in full precision on GPUs (TF32 changes ~1e-3)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def calibration_batch(seed: int, preset: Preset, size: int = 128) -> np.ndarray:
    """Model inputs to set BN statistics from: white and smooth pixel noise (photographs'
    correlated pixels drive random filters much harder than white noise), normalised by the
    weights' preset so that e.g. Keras 'caffe' inputs keep their [0, 255] scale."""
    import jax

    from resnet_jax.data.presets import normalize

    rng = np.random.default_rng(seed)
    white = rng.uniform(0, 255, (2, size, size, 3)).astype(np.float32)
    low = rng.uniform(0, 255, (2, size // 16, size // 16, 3)).astype(np.float32)
    smooth = np.asarray(jax.image.resize(low, (2, size, size, 3), "bilinear"))
    return np.asarray(normalize(np.concatenate([white, smooth]), preset), np.float32)


# Scale of the last layer of each residual branch. Trained ResNets keep these small; at 1 a
# random deep net is chaotic and amplifies float32 rounding ~30x more than trained weights do,
# while a wrongly converted weight still shows as a relative difference far above 1e-4.
RESIDUAL_BRANCH_SCALE = 0.25


def perturbation(seed: int, n: int) -> tuple[np.ndarray, ...]:
    """(gamma, beta, mean shift in std units, variance factor) for n BN channels."""
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0.5, 1.5, n).astype(np.float32),
        (0.1 * rng.standard_normal(n)).astype(np.float32),
        (0.1 * rng.standard_normal(n)).astype(np.float32),
        rng.uniform(0.5, 2.0, n).astype(np.float32),
    )


def randomize_torch_batchnorm(model: Any, seed: int, preset: Preset) -> None:
    """Random BN affine parameters and running statistics, so no BN is an identity.

    Statistics are first measured on ``calibration_batch`` (as training would leave them,
    which keeps activations at a trained network's scale through 50 blocks), then perturbed:
    mean shifted by N(0, 0.1) standard deviations, variance scaled by U(0.5, 2). The BN that
    ends each residual branch (``bn3``, or ``bn2`` in basic blocks) is scaled down by
    ``RESIDUAL_BRANCH_SCALE``.
    """
    import torch

    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    draws = [perturbation(seed + i, m.num_features) for i, m in enumerate(norms)]
    ends = {
        id(getattr(block, "bn3", None) or block.bn2)
        for name, stage in model.named_children()
        if name.startswith("layer")
        for block in stage
    }
    with torch.no_grad():
        for m, (gamma, beta, _, _) in zip(norms, draws, strict=True):
            scale = RESIDUAL_BRANCH_SCALE if id(m) in ends else 1.0
            m.weight.copy_(torch.from_numpy(scale * gamma))
            m.bias.copy_(torch.from_numpy(scale * beta))
            m.reset_running_stats()
            m.momentum = None  # cumulative average: one batch sets the statistics
        model.train()
        model(torch.from_numpy(calibration_batch(seed, preset).transpose(0, 3, 1, 2).copy()))
        model.eval()
        for m, (_, _, shift, factor) in zip(norms, draws, strict=True):
            m.momentum = 0.1
            m.running_mean.add_(torch.from_numpy(shift) * m.running_var.sqrt())
            m.running_var.mul_(torch.from_numpy(factor))


def torch_runner(model: Any, stages: int = 4) -> Callable[[np.ndarray], Activations]:
    """Forward hooks on maxpool, every ``layerS[i]`` and the input of ``fc``; NCHW -> NHWC."""
    import torch

    device = torch_device()
    model = model.eval().to(device)

    def run(x: np.ndarray) -> Activations:
        disable_torch_tf32()
        out: dict[str, Any] = {}
        handles = [model.maxpool.register_forward_hook(_store(out, "stem"))]
        for s in range(1, stages + 1):
            for i, block in enumerate(getattr(model, f"layer{s}")):
                handles.append(block.register_forward_hook(_store(out, f"layer{s}_{i}")))
        handles.append(
            model.fc.register_forward_pre_hook(lambda m, args: out.__setitem__("pooled", args[0]))
        )
        try:
            with torch.no_grad():
                xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
                out["logits"] = model(xt)
        finally:
            for h in handles:
                h.remove()
        acts = {}
        for k, v in out.items():
            v = v.detach().float().cpu().numpy()
            acts[k] = v.reshape(v.shape[0], -1) if k == "pooled" else _nhwc(v)
        return acts

    return run


def _store(out: dict, key: str):
    return lambda module, args, output: out.__setitem__(key, output)


def _nhwc(v: np.ndarray) -> np.ndarray:
    return v.transpose(0, 2, 3, 1) if v.ndim == 4 else v


def preset_from_values(
    source: str,
    resize: int,
    crop: int,
    interpolation: str,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> Preset:
    """A named preset from presets.py when the values match one, else a custom one."""
    from resnet_jax.data.presets import PRESETS

    preset = Preset(
        f"{source}_custom",
        resize=int(resize),
        crop=int(crop),
        interpolation=interpolation,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
    for named in PRESETS.values():
        if dataclasses.replace(named, name=preset.name) == preset:
            return named
    return preset
