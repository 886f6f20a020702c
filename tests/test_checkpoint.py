"""Orbax checkpoints: exact round trip of the whole train state, keep-N, architecture checks."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from resnet_jax import create_model
from resnet_jax.checkpoint import (
    Checkpointer,
    CheckpointError,
    architecture_fingerprint,
    check_compatible,
)
from resnet_jax.parallel import create_data_parallel
from resnet_jax.training.state import TrainState


def tiny_state(widths=(4, 8, 8), seed=0):
    """A TrainState of a tiny ResNet with random values, built without compiling the model."""
    model = create_model("resnet20", stage_widths=widths, stem_width=4, num_classes=3)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 3)))
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(s.dtype), shapes)
    tx = optax.sgd(0.1, momentum=0.9, nesterov=True)
    return TrainState(
        step=jnp.int32(0),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=tx.init(variables["params"]),
        rng=jax.random.PRNGKey(seed),
    )


def perturbed(state):
    """A state whose momentum, BN statistics and step are not at their initial values."""
    return state.replace(
        step=jnp.int32(7),
        opt_state=jax.tree.map(lambda x: x + 0.25, state.opt_state),
        batch_stats=jax.tree.map(lambda x: x * 1.5 + 0.1, state.batch_stats),
    )


def assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_and_keeps_shardings(tmp_path):
    parallel = create_data_parallel("shard_map")
    state = parallel.replicate(perturbed(tiny_state()))
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    meta = {"model_name": "resnet20", "data": {"seed": 0, "step": 7}}
    ckpt.save(7, state, meta)
    ckpt.wait()
    fresh = parallel.replicate(tiny_state(seed=1))
    restored, got_meta = ckpt.restore(fresh)
    ckpt.close()
    assert got_meta == meta
    assert_trees_equal(restored, state)
    assert int(restored.step) == 7
    sharding = restored.params["fc"]["kernel"].sharding
    assert isinstance(sharding, NamedSharding) and sharding.spec == P()
    assert len(sharding.device_set) == jax.device_count()


def test_round_trip_of_host_arrays_for_pmap(tmp_path):
    parallel = create_data_parallel("pmap")
    state = parallel.replicate(perturbed(tiny_state()))
    host = parallel.unreplicate(state)
    assert isinstance(host.params["fc"]["kernel"], np.ndarray)
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=1, async_save=False)
    ckpt.save(7, host, {"step": 7})
    restored, _ = ckpt.restore(parallel.unreplicate(parallel.replicate(tiny_state(seed=1))))
    ckpt.close()
    assert_trees_equal(restored, host)
    assert_trees_equal(parallel.unreplicate(parallel.replicate(restored)), host)


def test_keeps_the_last_n_and_restores_the_latest(tmp_path):
    state = tiny_state()
    ckpt = Checkpointer(str(tmp_path / "ckpt"), keep=2)
    for step in (1, 2, 3, 4):
        ckpt.save(step, state.replace(step=jnp.int32(step)), {"step": step})
    ckpt.wait()
    assert ckpt.all_steps() == [3, 4]
    assert ckpt.latest_step() == 4
    assert ckpt.read_meta() == {"step": 4}
    restored, meta = ckpt.restore(state)
    assert int(restored.step) == 4 and meta["step"] == 4
    ckpt.close()
    assert sorted(os.listdir(tmp_path / "ckpt")) == ["3", "4"]


def test_empty_directory_has_no_latest_step(tmp_path):
    ckpt = Checkpointer(str(tmp_path / "ckpt"))
    assert ckpt.latest_step() is None and ckpt.read_meta() is None
    with pytest.raises(CheckpointError, match="No checkpoint"):
        ckpt.restore(tiny_state())
    ckpt.close()


def test_fingerprint_tells_architectures_apart():
    a, b = tiny_state().params, tiny_state(seed=3).params
    c = tiny_state(widths=(4, 8, 16)).params
    assert architecture_fingerprint(a) == architecture_fingerprint(b)
    assert architecture_fingerprint(a) != architecture_fingerprint(c)


def test_other_architecture_is_refused_with_a_clear_message():
    meta = {"model_name": "resnet20", "architecture": "abc", "step": 5}
    check_compatible(meta, model_name="resnet20", fingerprint="abc", where="/w")
    with pytest.raises(
        CheckpointError, match=r"model 'resnet20'.*asks for 'resnet56'.*new --workdir"
    ):
        check_compatible(meta, model_name="resnet56", fingerprint="def", where="/w")
