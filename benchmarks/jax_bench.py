"""resnet-jax runners: the training system's real train step and the model's inference.

The train step is ``resnet_jax.training.steps.train_step`` compiled by
``resnet_jax.parallel`` (``jit(shard_map)`` over a mesh of ``num_devices`` devices), with SGD
momentum 0.9 and no weight decay, as the other frameworks' steps. Compile time is the
``lower()`` and ``compile()`` time of that function; FLOPs and memory come from XLA's cost and
memory analyses of the compiled executable (per device).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.common import peak_flops
from resnet_jax import parallel as par
from resnet_jax.backend import Backend, get_backend
from resnet_jax.build import build_model
from resnet_jax.data.presets import get_preset
from resnet_jax.spec import default_config
from resnet_jax.training import steps
from resnet_jax.training.state import TrainState, create_train_state

DTYPES = {"bf16": jnp.bfloat16, "fp32": jnp.float32}
FEEDS = ("device", "host", "prefetch")


@dataclasses.dataclass(frozen=True)
class JaxConfig:
    """Everything that changes the compiled program (``batch_size`` is per device)."""

    model: str = "resnet50"
    precision: str = "bf16"
    batch_size: int = 32
    image_size: int = 224
    num_classes: int = 1000
    donate: bool = True
    remat: bool = False
    space_to_depth: bool = False
    num_devices: int = 1
    parallelism: str = "shard_map"  # or 'pmap'
    image_dtype: str = "float32"  # 'uint8': pixels shipped, normalised in the step
    backend: str = "xla"  # resnet_jax.backend: 'cpu_fast' is the opt-in CPU formulation
    model_kwargs: tuple[tuple[str, Any], ...] = ()

    def build_model(self, parallel: par.DataParallel | None = None):
        """The benchmarked network, built as training builds a run's (``resnet_jax.build``)."""
        config = default_config()
        config.model.update(
            name=self.model,
            zero_init_last_bn=False,
            remat=self.remat,
            space_to_depth=self.space_to_depth,
            kwargs=dict(self.model_kwargs),
        )
        config.dtype = jnp.dtype(DTYPES[self.precision]).name
        config.backend = self.backend
        return build_model(config, self.num_classes, parallel=parallel)

    def backend_for(self) -> Backend:
        return get_backend(self.backend, jax.devices()[0].platform)


def compiled_flops(compiled: Any) -> float | None:
    """FLOPs of one execution from XLA's cost analysis (a dict, or a list of dicts)."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    if not analysis or "flops" not in analysis:
        return None
    return float(analysis["flops"])


def compiled_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's buffer assignment for one device: arguments + outputs - aliased + temporaries."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # Not every backend implements it.
        return None
    if m is None:
        return None
    total = (
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )
    return {
        "argument_bytes": int(m.argument_size_in_bytes),
        "output_bytes": int(m.output_size_in_bytes),
        "alias_bytes": int(m.alias_size_in_bytes),
        "temp_bytes": int(m.temp_size_in_bytes),
        "total_bytes": int(total),
    }


def device_peak_bytes(device: Any) -> int | None:
    """The runtime allocator's peak bytes in use (GPU/TPU); None where not reported (CPU)."""
    stats = device.memory_stats()
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def count_convolutions(hlo_text: str) -> int:
    """Convolution instructions in compiled HLO text (1x1 ones are matrix products on CPU)."""
    return len(re.findall(r"\bconvolution\(", hlo_text))


def count_all_reduces(hlo_text: str) -> int:
    """All-reduce instructions (sync or async start) in compiled HLO text."""
    return len(re.findall(r"\ball-reduce(?:-start)?\(", hlo_text))


@functools.lru_cache(maxsize=4)
def _host_state(model: str, num_classes: int, image_size: int, kwargs: tuple) -> TrainState:
    """The initial train state (SGD momentum) on the host, shared by runners of one net."""
    net = JaxConfig(model, "fp32", num_classes=num_classes, model_kwargs=kwargs).build_model()
    tx = optax.sgd(0.1, momentum=0.9)
    state = create_train_state(net, tx, seed=0, image_shape=(image_size, image_size, 3))
    return jax.device_get(state)


def _host_batch(
    batch_size: int, image_size: int, num_classes: int, image_dtype: str = "float32"
) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    shape = (batch_size, image_size, image_size, 3)
    if image_dtype == "uint8":
        image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    else:
        image = rng.standard_normal(shape, dtype=np.float32)
    return {
        "image": image,
        "label": rng.integers(0, num_classes, size=batch_size, dtype=np.int32),
    }


@dataclasses.dataclass
class _Compiled:
    parallel: par.DataParallel
    step: Any
    info: dict[str, Any]


_COMPILED: dict[JaxConfig, _Compiled] = {}


def _compile_train(cfg: JaxConfig) -> _Compiled:
    """Builds and compiles the train step for ``cfg`` once per process."""
    if cfg in _COMPILED:
        return _COMPILED[cfg]
    devices = jax.devices()[: cfg.num_devices]
    if len(devices) < cfg.num_devices:
        raise ValueError(f"{cfg.num_devices} devices asked for, {len(jax.devices())} present.")
    parallel = par.create_data_parallel(cfg.parallelism, devices=devices)
    model = cfg.build_model(parallel)
    tx = optax.sgd(0.1, momentum=0.9)
    fn = steps.compile_train_step(
        parallel,
        model=model,
        tx=tx,
        preset=get_preset("torchvision_v1"),  # normalises uint8 batches
        donate_state=cfg.donate,
    )
    state = parallel.replicate(
        _host_state(cfg.model, cfg.num_classes, cfg.image_size, cfg.model_kwargs)
    )
    global_batch = cfg.batch_size * cfg.num_devices
    batch = parallel.shard_batch(
        _host_batch(global_batch, cfg.image_size, cfg.num_classes, cfg.image_dtype)
    )
    start = time.perf_counter()
    lowered = fn.lower(state, batch)
    lowered_at = time.perf_counter()
    compiled = lowered.compile()
    done = time.perf_counter()
    flops = compiled_flops(compiled)
    info = {
        "lower_seconds": lowered_at - start,
        "compile_seconds": done - lowered_at,
        "flops_per_step": flops,
        "flops_per_image": flops / cfg.batch_size if flops else None,
        "peak_flops": peak_flops(devices[0].device_kind, cfg.precision),
        "compiled_memory": compiled_memory(compiled),
        "all_reduce_ops": count_all_reduces(compiled.as_text()),
        "convolution_ops": count_convolutions(compiled.as_text()),
        "num_devices": cfg.num_devices,
        "parallelism": cfg.parallelism,
        "per_device_batch": cfg.batch_size,
        "donate": cfg.donate,
        "remat": cfg.remat,
        "space_to_depth": cfg.space_to_depth,
        "backend": cfg.backend,
        "xla_compiler_options": None,  # train steps keep XLA's defaults on every backend
    }
    _COMPILED[cfg] = _Compiled(parallel, compiled, info)
    return _COMPILED[cfg]


class JaxTrainRunner:
    """The training system's step on synthetic data.

    feed: 'device' reuses one batch already on the devices; 'host' transfers a NumPy batch every
    step; 'prefetch' does so through ``parallel.prefetch_to_devices`` (2 batches ahead).
    host_sync: read the loss on the host after every step (what a naive loop does) instead of
    summing metrics on the device and syncing once per window.
    """

    def __init__(
        self,
        cfg: JaxConfig,
        *,
        label: str = "jax",
        feed: str = "device",
        host_sync: bool = False,
        warmup: int = 1,
    ) -> None:
        if feed not in FEEDS:
            raise ValueError(f"Unknown feed {feed!r}; expected one of {FEEDS}.")
        self.cfg, self.label, self.feed, self.host_sync = cfg, label, feed, host_sync
        self.warmup = warmup
        self.images_per_step = cfg.batch_size * cfg.num_devices

    def setup(self) -> dict[str, Any]:
        built = _compile_train(self.cfg)
        self._parallel, self._step = built.parallel, built.step
        cfg = self.cfg
        self._host = _host_batch(
            self.images_per_step, cfg.image_size, cfg.num_classes, cfg.image_dtype
        )
        self._device_batch = self._parallel.shard_batch(self._host)
        self._prefetched = par.prefetch_to_devices(
            itertools.repeat(self._host), self._parallel, size=2
        )
        self.state = self._parallel.replicate(
            _host_state(cfg.model, cfg.num_classes, cfg.image_size, cfg.model_kwargs)
        )
        self.run(self.warmup)
        device = self._parallel.devices[0]
        return {
            **built.info,
            "arch": f"resnet-jax {cfg.model}",
            "precision": cfg.precision,
            "feed": self.feed,
            "host_sync": self.host_sync,
            "device_peak_bytes": device_peak_bytes(device),
        }

    def _batch(self) -> dict[str, jax.Array]:
        if self.feed == "host":
            return self._parallel.shard_batch(self._host)
        if self.feed == "prefetch":
            return next(self._prefetched)
        return self._device_batch

    def run(self, steps: int) -> None:
        sums = None
        for _ in range(steps):
            self.state, metrics = self._step(self.state, self._batch())
            if self.host_sync:
                float(metrics["loss"])
            else:
                sums = metrics if sums is None else jax.tree.map(jnp.add, sums, metrics)
        jax.block_until_ready((self.state, sums))

    def close(self) -> None:
        self.state = self._device_batch = self._prefetched = None


class JaxInferRunner:
    """``model.apply`` in eval mode (running BN statistics) under ``jax.jit`` on one device."""

    def __init__(self, cfg: JaxConfig, *, label: str = "jax", warmup: int = 1) -> None:
        self.cfg, self.label, self.warmup = cfg, label, warmup
        self.images_per_step = cfg.batch_size

    def setup(self) -> dict[str, Any]:
        cfg = self.cfg
        device = jax.devices()[0]
        model = cfg.build_model()
        host = _host_state(cfg.model, cfg.num_classes, cfg.image_size, cfg.model_kwargs)
        self._variables = jax.device_put(
            {"params": host.params, "batch_stats": host.batch_stats}, device
        )
        images = _host_batch(cfg.batch_size, cfg.image_size, cfg.num_classes)["image"]
        self._images = jax.device_put(images, device)
        options = cfg.backend_for().forward_options
        fn = jax.jit(
            lambda variables, x: model.apply(variables, x, train=False), compiler_options=options
        )
        start = time.perf_counter()
        lowered = fn.lower(self._variables, self._images)
        lowered_at = time.perf_counter()
        self._fn = lowered.compile()
        done = time.perf_counter()
        self.run(self.warmup)
        flops = compiled_flops(self._fn)
        return {
            "lower_seconds": lowered_at - start,
            "compile_seconds": done - lowered_at,
            "flops_per_step": flops,
            "flops_per_image": flops / cfg.batch_size if flops else None,
            "peak_flops": peak_flops(device.device_kind, cfg.precision),
            "compiled_memory": compiled_memory(self._fn),
            "device_peak_bytes": device_peak_bytes(device),
            "arch": f"resnet-jax {cfg.model}",
            "precision": cfg.precision,
            "backend": cfg.backend,
            "xla_compiler_options": options,
            "convolution_ops": count_convolutions(self._fn.as_text()),
        }

    def run(self, steps: int) -> None:
        out = None
        for _ in range(steps):
            out = self._fn(self._variables, self._images)
        jax.block_until_ready(out)

    def close(self) -> None:
        self._variables = self._images = None
