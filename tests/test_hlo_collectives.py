"""Collectives in the compiled data-parallel train step on 8 simulated CPU devices.

The step is the training system's own (``steps.train_step`` under ``parallel.compile``) on a
narrow ResNet-18 (20 BatchNorm layers, 62 parameter arrays) and on the same net with one block
per stage (12 BN layers, 38 parameter arrays), read from
``jit(...).lower(...).compile().as_text()``.

Counts on this CPU build (XLA's all-reduce combiner on), ResNet-18:

- Gradients: 59 gradient arrays (the 62 less 3 that XLA computes once: in a block with a
  projection shortcut the last BN's and the shortcut BN's bias gradients are the same sum)
  and the 3 metric sums travel in 2 all-reduce ops, for either depth; one of the two also
  carries the stem BN's backward reduction.
- Sync BN over 8 devices: 2 reductions per BN layer (forward statistics, backward), 40 in
  all, each of one [2, C] array (mean and mean of squares); XLA combines a block's two
  independent ones (projection shortcut and first BN), so the step has 35 all-reduce ops.
- BN groups of 2 devices: the same 40 reductions over groups {0,1}, {2,3}, ...; the running
  statistics (40 arrays) are averaged over all devices in the single gradient all-reduce.
- Per-device BN (``bn_group_size=1``: no BN axis): no BN reductions; 1 all-reduce op in all.
- pmap lowers to the same collectives as shard_map (145 one-array all-reduces before XLA
  combines them, 40 of them BN).
"""

import dataclasses
import functools
import re

import jax
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import parallel as par
from resnet_jax.models import create_model
from resnet_jax.training import steps
from resnet_jax.training.state import create_train_state

NARROW = dict(stem_width=8, stage_widths=(8, 8, 16, 16), num_classes=5)
SHALLOW = (1, 1, 1, 1)
BN_LAYERS = {(2, 2, 2, 2): 20, SHALLOW: 12}
# Gradient arrays in the all-reduces: parameter arrays less one shared BN-bias gradient per
# projection-shortcut block (3).
GRADIENTS = {(2, 2, 2, 2): 62 - 3, SHALLOW: 38 - 3}
RUNNING_STATS = 40
METRIC_SCALARS = 3  # loss, top-1 hits, count
ALL = "{{0,1,2,3,4,5,6,7}}"


@dataclasses.dataclass(frozen=True)
class AllReduce:
    """One all-reduce instruction: its operand shapes, replica groups, and op_name metadata."""

    shapes: tuple[tuple[int, ...], ...]
    groups: str
    op_name: str

    @property
    def bn_stats(self) -> int:
        """Operands that are one BN layer's [2, C] (mean, mean of squares) reduction."""
        return sum(len(s) == 2 and s[0] == 2 for s in self.shapes)

    @property
    def scalars(self) -> int:
        return sum(len(s) == 0 for s in self.shapes)

    @property
    def other(self) -> int:
        """Gradients (and averaged running statistics): everything else."""
        return len(self.shapes) - self.bn_stats - self.scalars


_INSTRUCTION = re.compile(r"= (?P<type>.+?) all-reduce(?:-start)?\((?P<rest>.*)$")


def all_reduces(hlo_text: str) -> list[AllReduce]:
    out = []
    for line in hlo_text.splitlines():
        m = _INSTRUCTION.search(line)
        if not m:
            continue
        shapes = tuple(
            tuple(int(d) for d in dims.split(",") if d)
            for dims in re.findall(r"\w+\[([\d,]*)\]", m["type"])
        )
        groups = re.search(r"replica_groups=(\{[\d,{}]*\})", m["rest"])
        op_name = re.search(r'op_name="([^"]*)"', m["rest"])
        out.append(AllReduce(shapes, groups[1] if groups else "", op_name[1] if op_name else ""))
    return out


@functools.cache
def lowered_step(mode: str, bn_group_size: int, stage_sizes: tuple = (2, 2, 2, 2)):
    """The train step on all 8 devices (batch 2 per device, 32x32), lowered."""
    assert jax.device_count() == 8, "tests/conftest.py sets 8 simulated CPU devices"
    parallel = par.create_data_parallel(mode, bn_group_size=bn_group_size)
    overrides = parallel.model_overrides()
    model = create_model("resnet18", stage_sizes=stage_sizes, **NARROW, **overrides)
    tx = optax.sgd(0.1, momentum=0.9)
    # Abstract arguments: lowering needs shapes and shardings, not values.
    state = jax.eval_shape(lambda: create_train_state(model, tx, seed=0, image_shape=(32, 32, 3)))
    if mode == "pmap":
        state = jax.tree.map(lambda a: jax.ShapeDtypeStruct((8, *a.shape), a.dtype), state)
    else:
        replicated = NamedSharding(parallel.mesh, P())
        state = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=replicated), state
        )
    step = steps.compile_train_step(parallel, model=model, tx=tx)
    batch = parallel.shard_batch(
        {"image": np.zeros((16, 32, 32, 3), np.float32), "label": np.zeros((16,), np.int32)}
    )
    return step.lower(state, batch)


def compiled_step(*args) -> str:
    """HLO text of the compiled step (optimised by XLA, collectives combined)."""
    return lowered_step(*args).compile().as_text()


def totals(ops: list[AllReduce]) -> dict[str, int]:
    return {
        "ops": len(ops),
        "bn_stats": sum(op.bn_stats for op in ops),
        "bn_forward": sum(op.bn_stats for op in ops if "transpose(" not in op.op_name),
        "scalars": sum(op.scalars for op in ops),
        "other": sum(op.other for op in ops),
        "ops_with_gradients": sum(op.other > 0 for op in ops),
    }


@pytest.mark.parametrize("stage_sizes", [(2, 2, 2, 2), SHALLOW])
def test_sync_bn_step_has_two_bn_reductions_per_layer_and_few_gradient_all_reduces(stage_sizes):
    ops = all_reduces(compiled_step("shard_map", 0, stage_sizes))
    t = totals(ops)
    assert t["bn_stats"] == 2 * BN_LAYERS[stage_sizes]  # 40: forward + backward per layer
    assert t["bn_forward"] == BN_LAYERS[stage_sizes]
    assert t["other"] == GRADIENTS[stage_sizes]  # each gradient once
    assert t["scalars"] == METRIC_SCALARS
    assert t["ops_with_gradients"] <= 2  # combined: 2 ops
    assert all(op.groups == ALL for op in ops)
    if stage_sizes == (2, 2, 2, 2):
        assert t["ops"] == 35


def test_gradient_all_reduce_count_does_not_grow_with_depth():
    counts = [
        totals(all_reduces(compiled_step("shard_map", 0, s)))["ops_with_gradients"]
        for s in (SHALLOW, (2, 2, 2, 2))
    ]
    assert counts[0] == counts[1]


def test_bn_groups_of_two_reduce_within_pairs_and_average_running_stats():
    ops = all_reduces(compiled_step("shard_map", 2))
    t = totals(ops)
    assert t["bn_stats"] == 40
    assert {op.groups for op in ops if op.bn_stats} == {"{{0,1},{2,3},{4,5},{6,7}}"}
    # Gradients plus the running mean and variance arrays, averaged over all 8 devices.
    assert t["other"] == GRADIENTS[(2, 2, 2, 2)] + RUNNING_STATS
    assert t["ops_with_gradients"] == 1
    assert all(op.groups == ALL for op in ops if op.other)


def test_per_device_bn_from_bn_group_size_one_has_no_bn_collectives():
    ops = all_reduces(compiled_step("shard_map", 1))
    t = totals(ops)
    assert t["bn_stats"] == 0
    assert t["other"] == GRADIENTS[(2, 2, 2, 2)] + RUNNING_STATS
    assert t["ops"] == t["ops_with_gradients"] == 1


def lowered_all_reduce_types(lowered) -> list[str]:
    """Operand types of the all-reduces in the lowered StableHLO (one per array before XLA)."""
    return re.findall(r'"stablehlo.all_reduce".*?\}\) : \((.*?)\) ->', lowered.as_text(), re.S)


def bn_shaped(types: list[str]) -> int:
    return sum(bool(re.fullmatch(r"tensor<2x\d+xf32>", t)) for t in types)


def test_pmap_lowers_to_the_same_collectives_as_shard_map():
    """Before XLA combines them: 145 all-reduces of one array each, 40 of them BN."""
    pmap = lowered_all_reduce_types(lowered_step("pmap", 0))
    shard_map = lowered_all_reduce_types(lowered_step("shard_map", 0))
    assert len(pmap) == len(shard_map) == 62 + 2 * 20 + METRIC_SCALARS
    assert bn_shaped(pmap) == bn_shaped(shard_map) == 40
