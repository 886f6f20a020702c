"""Data parallelism: one per-device step run under ``jit(shard_map)`` (default) or ``pmap``.

shard_map uses a 2-D mesh ``('replica', 'bn')``: the batch is split over both axes,
gradients are averaged over both, and BatchNorm reduces over the inner ``'bn'`` axis, so a
BN group spans ``bn_group_size`` devices (all devices by default: sync BN). pmap has one
axis, ``'batch'``, and expresses BN groups with ``axis_index_groups``. Multi-host: each
process feeds its own rows and ``jax.make_array_from_process_local_data`` assembles the
global batch.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

PARALLELISM_MODES = ("shard_map", "pmap")
MESH_AXES = ("replica", "bn")
PMAP_AXIS = "batch"


def init_distributed(enabled: bool) -> None:
    """Joins a multi-host job (TPU pod, SLURM, Open MPI, Kubernetes: found automatically)
    before any device is touched. Elsewhere set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES
    and JAX_PROCESS_ID on every process."""
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not (enabled or address) or jax.distributed.is_initialized():
        return
    kwargs = {}
    if "JAX_NUM_PROCESSES" in os.environ:
        kwargs["num_processes"] = int(os.environ["JAX_NUM_PROCESSES"])
    if "JAX_PROCESS_ID" in os.environ:
        kwargs["process_id"] = int(os.environ["JAX_PROCESS_ID"])
    try:
        jax.distributed.initialize(address, **kwargs)
    except ValueError as e:
        raise ValueError(
            f"multihost=True, but no multi-host cluster was found ({e}). TPU pods, SLURM, Open MPI "
            "and Kubernetes are detected automatically; elsewhere set JAX_COORDINATOR_ADDRESS "
            "(host:port of process 0), JAX_NUM_PROCESSES and JAX_PROCESS_ID on every process. "
            "On a single host use --config.multihost=False."
        ) from e


def check_batch_size(
    batch_size: int, *, num_devices: int, process_count: int, what: str = "batch_size"
) -> None:
    """Raises a clear error when a global batch cannot be split evenly over devices/hosts."""
    if batch_size <= 0 or batch_size % num_devices:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the number of devices ({num_devices}); "
            f"use a multiple of {num_devices}, e.g. --config.{what}="
            f"{max(num_devices, batch_size // num_devices * num_devices)}."
        )
    if batch_size % process_count:
        raise ValueError(
            f"{what}={batch_size} is not divisible by the number of processes ({process_count})."
        )


def bn_group_size_for(bn_group_size: int, num_devices: int) -> int:
    """Devices per BN group: 0 (or >= all) means every device, i.e. sync BN."""
    group = num_devices if bn_group_size <= 0 else min(bn_group_size, num_devices)
    if num_devices % group:
        raise ValueError(
            f"bn_group_size={bn_group_size} must divide the number of devices ({num_devices})."
        )
    return group


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """How the per-device steps are mapped onto devices, and how data reaches them."""

    mode: str
    devices: tuple
    bn_group: int
    mesh: Mesh

    @property
    def num_devices(self) -> int:
        return len(self.devices)

    @property
    def local_devices(self) -> list:
        return [d for d in self.devices if d.process_index == jax.process_index()]

    @property
    def axis_name(self) -> Any:
        """Axis (or axes) over which gradients and metrics are reduced."""
        return MESH_AXES if self.mode == "shard_map" else PMAP_AXIS

    @property
    def has_bn_groups(self) -> bool:
        return self.bn_group < self.num_devices

    def model_overrides(self) -> dict[str, Any]:
        """BatchNorm settings for ``create_model`` so BN statistics span one group."""
        if self.bn_group == 1:  # Per-device BN: no collective at all, not singleton groups.
            return {"bn_axis_name": None, "bn_axis_index_groups": None}
        if self.mode == "shard_map":
            return {"bn_axis_name": "bn", "bn_axis_index_groups": None}
        groups = None
        if self.has_bn_groups:
            n, g = self.num_devices, self.bn_group
            groups = [list(range(i, i + g)) for i in range(0, n, g)]
        return {"bn_axis_name": PMAP_AXIS, "bn_axis_index_groups": groups}

    def compile(
        self,
        per_device_fn: Callable,
        *,
        donate_state: bool,
        compiler_options: dict[str, str] | None = None,
    ) -> Callable:
        """Wraps ``fn(state, batch) -> outputs`` so state is replicated, batch sharded.

        ``compiler_options`` go to ``jax.jit`` (shard_map); ``jax.pmap`` takes none.
        """
        donate = (0,) if donate_state else ()
        if self.mode == "pmap":
            return jax.pmap(
                per_device_fn, axis_name=PMAP_AXIS, devices=self.devices, donate_argnums=donate
            )
        # check_vma=False: per-device gradients are averaged explicitly with pmean, exactly
        # as under pmap (which is itself jit(shard_map(check_vma=False)) in JAX >= 0.8).
        mapped = jax.shard_map(
            per_device_fn,
            mesh=self.mesh,
            in_specs=(P(), P(MESH_AXES)),
            out_specs=P(),
            check_vma=False,
        )
        return jax.jit(mapped, compiler_options=compiler_options, donate_argnums=donate)

    def replicate(self, tree: Any) -> Any:
        """Host or single-device pytree -> the state layout the compiled steps take."""
        if self.mode == "pmap":
            n, sharding = len(self.local_devices), _pmap_sharding(tuple(self.local_devices))
            return jax.tree.map(
                lambda x: jax.device_put(
                    np.broadcast_to(np.asarray(x), (n, *np.shape(x))), sharding
                ),
                tree,
            )
        return jax.device_put(tree, NamedSharding(self.mesh, P()))

    def unreplicate(self, tree: Any) -> Any:
        """The state as one copy: global replicated arrays (shard_map) or host arrays (pmap)."""
        if self.mode == "pmap":
            return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
        return tree

    def shard_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        """This process's rows of the global batch -> arrays split over the devices."""
        if self.mode == "pmap":
            n, sharding = len(self.local_devices), _pmap_sharding(tuple(self.local_devices))
            return {
                k: jax.device_put(v.reshape(n, -1, *v.shape[1:]), sharding)
                for k, v in local_batch.items()
            }
        sharding = NamedSharding(self.mesh, P(MESH_AXES))
        return {
            k: jax.make_array_from_process_local_data(sharding, v) for k, v in local_batch.items()
        }


@functools.lru_cache(maxsize=8)
def _pmap_sharding(local_devices: tuple) -> NamedSharding:
    """pmap's layout: one row of the leading axis per local device."""
    mesh = Mesh(np.array(local_devices), (PMAP_AXIS,), axis_types=(AxisType.Auto,))
    return NamedSharding(mesh, P(PMAP_AXIS))


def create_data_parallel(
    mode: str = "shard_map", *, bn_group_size: int = 0, devices: Iterable | None = None
) -> DataParallel:
    """Builds the mesh for ``mode`` over ``devices`` (default: all devices of all hosts)."""
    if mode not in PARALLELISM_MODES:
        raise ValueError(f"Unknown parallelism {mode!r}; expected one of {PARALLELISM_MODES}.")
    devices = tuple(jax.devices() if devices is None else devices)
    group = bn_group_size_for(bn_group_size, len(devices))
    shape = (len(devices) // group, group)
    auto = (AxisType.Auto, AxisType.Auto)
    if devices == tuple(jax.devices()):
        mesh = jax.make_mesh(shape, MESH_AXES, axis_types=auto)
    else:
        mesh = Mesh(np.array(devices).reshape(shape), MESH_AXES, axis_types=auto)
    if mode == "shard_map":
        devices = tuple(mesh.devices.flat)
    return DataParallel(mode=mode, devices=devices, bn_group=group, mesh=mesh)


def prefetch_to_devices(
    batches: Iterator[dict[str, np.ndarray]], parallel: DataParallel, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Keeps ``size`` batches in flight to the devices while the current step runs."""
    queue: collections.deque = collections.deque()
    for batch in batches:
        queue.append(parallel.shard_batch(batch))
        if len(queue) > size:
            yield queue.popleft()
    while queue:
        yield queue.popleft()
