"""PyTorch torchvision resnet50 runners: eager channels-last, and ``torch.compile``.

Same work as the JAX step: forward in train mode (BN batch statistics), cross-entropy in
float32, backward, SGD momentum 0.9 (``foreach``). bf16 is ``torch.autocast`` (float32 weights
and BN statistics). ``torch.compile`` compiles the model; the optimizer step stays eager. Its
compile time is the first call's time minus a later call's. Data is made once on the device.
"""

from __future__ import annotations

import time
from typing import Any

PRECISIONS = {"bf16": "bfloat16", "fp32": "float32"}


def torch_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def compile_available() -> tuple[bool, str]:
    """Whether ``torch.compile`` can run here, and why not when it cannot."""
    import torch

    if not hasattr(torch, "compile"):
        return False, "torch.compile missing (torch < 2.0)"
    if torch_device() == "cpu":
        import shutil

        if not (shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")):
            return False, "no C++ compiler for the inductor CPU backend"
    return True, ""


class _TorchRunner:
    def __init__(
        self,
        *,
        precision: str,
        batch_size: int,
        image_size: int,
        num_classes: int = 1000,
        compiled: bool = False,
        compile_mode: str | None = None,
        label: str | None = None,
        warmup: int = 1,
        arch: str = "resnet50",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"Unknown precision {precision!r}; expected {list(PRECISIONS)}.")
        self.precision, self.batch_size, self.image_size = precision, batch_size, image_size
        self.num_classes, self.compiled, self.compile_mode = num_classes, compiled, compile_mode
        self.label = label or ("torch_compile" if compiled else "torch")
        self.warmup, self.arch = max(warmup, 1), arch  # The first step counts as warmup.
        self.images_per_step = batch_size

    def _build(self, train: bool) -> None:
        import torch

        from resnet_jax.convert.torch_compat import import_torchvision

        tv = import_torchvision()
        torch.manual_seed(0)
        self._torch = torch
        self._device = torch.device(torch_device())
        net = getattr(tv.models, self.arch)(num_classes=self.num_classes)
        net = net.to(self._device, memory_format=torch.channels_last)
        net.train(train)
        self._net = net
        self._fwd = torch.compile(net, mode=self.compile_mode) if self.compiled else net
        x = torch.randn(self.batch_size, 3, self.image_size, self.image_size, device=self._device)
        self._x = x.contiguous(memory_format=torch.channels_last)
        self._y = torch.randint(0, self.num_classes, (self.batch_size,), device=self._device)
        self._autocast = dict(
            device_type=self._device.type,
            dtype=getattr(torch, PRECISIONS[self.precision]),
            enabled=self.precision == "bf16",
        )

    def _sync(self) -> None:
        if self._device.type == "cuda":
            self._torch.cuda.synchronize()

    def _timed_setup(self) -> dict[str, Any]:
        """Runs the first step (which compiles, if compiled) and the rest of the warmup."""
        torch = self._torch
        cuda = self._device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        self.run(1)
        first = time.perf_counter() - start
        self.run(self.warmup - 1)
        return {
            "precision": self.precision,
            "arch": f"torchvision {self.arch}",
            "first_step_seconds": first,
            "compiled": self.compiled,
            "compile_mode": (self.compile_mode or "default") if self.compiled else None,
            "device_peak_bytes": (torch.cuda.max_memory_allocated() - before) if cuda else None,
            "device": str(self._device),
            "threads": torch.get_num_threads(),
        }

    def close(self) -> None:
        self._net = self._fwd = self._x = self._y = None
        if getattr(self, "_opt", None) is not None:
            self._opt = None


class TorchTrainRunner(_TorchRunner):
    """torchvision resnet50 train step: forward, cross-entropy, backward, SGD momentum."""

    def setup(self) -> dict[str, Any]:
        self._build(train=True)
        torch = self._torch
        self._opt = torch.optim.SGD(self._net.parameters(), lr=0.1, momentum=0.9, foreach=True)
        self._loss_sum = torch.zeros((), device=self._device)
        return self._timed_setup()

    def run(self, steps: int) -> None:
        torch = self._torch
        for _ in range(steps):
            self._opt.zero_grad(set_to_none=True)
            with torch.autocast(**self._autocast):
                logits = self._fwd(self._x)
            loss = torch.nn.functional.cross_entropy(logits.float(), self._y)
            loss.backward()
            self._opt.step()
            self._loss_sum += loss.detach()  # Metrics stay on the device: no sync per step.
        self._sync()


class TorchInferRunner(_TorchRunner):
    """torchvision resnet50 in eval mode under ``torch.inference_mode``."""

    def setup(self) -> dict[str, Any]:
        self._build(train=False)
        return self._timed_setup()

    def run(self, steps: int) -> None:
        torch = self._torch
        with torch.inference_mode(), torch.autocast(**self._autocast):
            for _ in range(steps):
                self._fwd(self._x)
        self._sync()
