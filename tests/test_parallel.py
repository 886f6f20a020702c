"""Data parallelism on 8 simulated CPU devices: shard_map, pmap and one device agree."""

import functools

import jax
import ml_collections
import numpy as np
import pytest

from resnet_jax import create_model
from resnet_jax.parallel import check_batch_size, create_data_parallel
from resnet_jax.training import optim, steps
from resnet_jax.training.state import create_train_state

GLOBAL_BATCH, SIZE, CLASSES, STEPS = 16, 8, 4, 3


pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(0)
    return [
        {
            "image": rng.standard_normal((GLOBAL_BATCH, SIZE, SIZE, 3)).astype(np.float32),
            "label": rng.integers(0, CLASSES, GLOBAL_BATCH).astype(np.int32),
        }
        for _ in range(STEPS)
    ]


def train(mode, batches, *, devices=None, bn_group_size=0):
    """STEPS steps of the real train step; returns the final state as host arrays."""
    parallel = create_data_parallel(mode, bn_group_size=bn_group_size, devices=devices)
    model = create_model(
        "resnet20",
        stage_widths=(4, 8, 8),
        stem_width=4,
        num_classes=CLASSES,
        **parallel.model_overrides(),
    )
    opt = ml_collections.ConfigDict(
        dict(name="sgd", momentum=0.9, nesterov=True, weight_decay=1e-4, grad_clip_norm=0.0)
    )
    tx = optim.create_optimizer(opt, lambda step: 0.1)
    state = create_train_state(model, tx, seed=0, image_shape=(SIZE, SIZE, 3))
    loss_fn = functools.partial(optim.cross_entropy, label_smoothing=0.1)
    step_fn = steps.compile_train_step(parallel, model=model, tx=tx, loss_fn=loss_fn)
    state = parallel.replicate(state)
    losses = []
    for batch in batches:
        state, metrics = step_fn(state, parallel.shard_batch(batch))
        m = jax.device_get(parallel.unreplicate(metrics))
        assert m["count"] == GLOBAL_BATCH
        losses.append(m["loss"] / m["count"])
    return jax.device_get(parallel.unreplicate(state)), losses


@pytest.fixture(scope="module")
def sync_runs(batches):
    return {
        "shard_map": train("shard_map", batches),
        "pmap": train("pmap", batches),
        "single": train("shard_map", batches, devices=jax.devices()[:1]),
    }


def assert_close(a, b, rtol, atol):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def test_shard_map_and_pmap_give_the_same_params(sync_runs):
    (a, loss_a), (b, loss_b) = sync_runs["shard_map"], sync_runs["pmap"]
    assert int(a.step) == int(b.step) == STEPS
    # Same per-device program; the all-reduce over the 2-D mesh ('replica', 'bn') sums in
    # another order than over pmap's one axis, so equal up to float rounding (~3e-7 here).
    assert_close(a.params, b.params, rtol=1e-5, atol=1e-6)
    assert_close(a.batch_stats, b.batch_stats, rtol=1e-5, atol=1e-6)
    assert_close(a.opt_state, b.opt_state, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)


def test_eight_devices_with_sync_bn_match_one_device_with_the_whole_batch(sync_runs):
    (multi, loss_m), (single, loss_s) = sync_runs["shard_map"], sync_runs["single"]
    # Not bitwise: sums over 8 devices x 2 examples run in another order than over 16 rows.
    assert_close(multi.params, single.params, rtol=1e-5, atol=1e-6)
    assert_close(multi.batch_stats, single.batch_stats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss_m, loss_s, rtol=1e-5)
    # The steps did move the params: the comparison is not of two initial states.
    init = train("shard_map", [], devices=jax.devices()[:1])[0]
    assert not np.allclose(init.params["fc"]["kernel"], single.params["fc"]["kernel"])


def test_bn_groups_agree_between_shard_map_and_pmap(batches, sync_runs):
    grouped, loss_g = train("shard_map", batches, bn_group_size=4)
    grouped_pmap, loss_p = train("pmap", batches, bn_group_size=4)
    assert_close(grouped.params, grouped_pmap.params, rtol=1e-5, atol=1e-6)
    assert_close(grouped.batch_stats, grouped_pmap.batch_stats, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loss_g, loss_p, rtol=1e-6)
    # Statistics over 8 images per group are not those over all 16.
    sync = sync_runs["shard_map"][0]
    assert not np.allclose(loss_g, sync_runs["shard_map"][1], rtol=1e-5)
    assert not np.allclose(grouped.params["fc"]["kernel"], sync.params["fc"]["kernel"], rtol=1e-5)


def test_bn_group_mesh_is_replicas_by_group():
    parallel = create_data_parallel("shard_map", bn_group_size=2)
    assert dict(parallel.mesh.shape) == {"replica": 4, "bn": 2}
    assert parallel.has_bn_groups
    assert parallel.model_overrides() == {"bn_axis_name": "bn", "bn_axis_index_groups": None}
    groups = create_data_parallel("pmap", bn_group_size=2).model_overrides()
    assert groups["bn_axis_index_groups"] == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert not create_data_parallel("shard_map").has_bn_groups


def test_batch_not_divisible_by_devices_is_rejected():
    check_batch_size(64, num_devices=8, process_count=1)
    with pytest.raises(ValueError, match=r"batch_size=60 is not divisible by .* devices \(8\)"):
        check_batch_size(60, num_devices=8, process_count=1)
    with pytest.raises(ValueError, match=r"processes \(3\)"):
        check_batch_size(64, num_devices=8, process_count=3)


def test_bn_group_size_must_divide_devices():
    with pytest.raises(ValueError, match="bn_group_size=3 must divide the number of devices"):
        create_data_parallel("shard_map", bn_group_size=3)
    with pytest.raises(ValueError, match="Unknown parallelism 'dp'"):
        create_data_parallel("dp")


MULTIHOST_DRIVER = """
import json, sys
import ml_collections
from configs import benchmark_synthetic
from resnet_jax.training import train_and_evaluate

config = benchmark_synthetic.get_config()
config.multihost = sys.argv[2] == "multi"
config.dtype = "float32"
config.model.name = "resnet20"
config.model.kwargs = ml_collections.ConfigDict(
    {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}
)
config.data.image_size = 8
config.data.num_classes = 10
config.data.synthetic_size = 256
config.data.synthetic_eval_size = 100
config.batch_size = 32
config.eval_batch_size = 16
config.num_train_steps = 4
config.eval_every_steps = 4
config.keep_checkpoints = 1
config.bn_group_size = 2
config.progress_bar = False
result = train_and_evaluate(config, sys.argv[1])
print("RESULT " + json.dumps(result["eval"]))
"""


@pytest.mark.slow
def test_two_processes_train_like_one(tmp_path):
    """jax.distributed on localhost: 2 processes x 4 CPU devices == 1 process x 8 devices."""
    import json
    import os
    import pathlib
    import socket
    import subprocess
    import sys

    repo = pathlib.Path(__file__).resolve().parents[1]
    driver = tmp_path / "driver.py"
    driver.write_text(MULTIHOST_DRIVER)
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    base = {
        **os.environ,
        "PYTHONPATH": str(repo),
        "JAX_PLATFORMS": "cpu",
        "JAX_CPU_COLLECTIVES_IMPLEMENTATION": "gloo",
        "JAX_COORDINATOR_ADDRESS": f"localhost:{port}",
        "JAX_NUM_PROCESSES": "2",
        "JAX_NUM_CPU_DEVICES": "4",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(driver), str(tmp_path / "multi"), "multi"],
            env={**base, "JAX_PROCESS_ID": str(i)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs[0][-3000:]
    multi = [json.loads(o.split("RESULT ")[-1]) for o in outputs]
    single_env = {**os.environ, "PYTHONPATH": str(repo), "JAX_NUM_CPU_DEVICES": "8"}
    single_env.pop("JAX_COORDINATOR_ADDRESS", None)
    out = subprocess.run(
        [sys.executable, str(driver), str(tmp_path / "single"), "single"],
        env={**single_env, "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    single = json.loads(out.stdout.split("RESULT ")[-1])
    assert multi[0] == multi[1]  # Every process sees the same global metrics.
    assert multi[0]["count"] == single["count"] == 100
    assert multi[0]["loss"] == pytest.approx(single["loss"], rel=1e-4)
    assert os.listdir(tmp_path / "multi" / "checkpoints") == ["4"]
