"""Weight EMA: timm's ModelEmaV3 decay, updated by the train step, kept in checkpoints (restored
bit for bit, also after a SIGKILL), evaluated beside the raw weights and used for inference."""

import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from recipes import tiny_synthetic_config
from test_crash_resume import Run, final_state

from resnet_jax import build as builder
from resnet_jax import create_model
from resnet_jax import spec as run_spec
from resnet_jax.parallel import create_data_parallel
from resnet_jax.training import ema, optim, restore, steps, train_and_evaluate
from resnet_jax.training.evaluate import eval_sums
from resnet_jax.training.state import create_train_state

pytestmark = pytest.mark.usefixtures("fast_compile")


def leaves(tree) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(tree))]


def differ(a, b) -> bool:
    """True when two trees of equal structure differ in at least one leaf."""
    return not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b), strict=True))


def test_decay_copies_first_then_warms_up_to_the_cap():
    at = ema.decay_schedule(0.9, warmup_power=0.75)
    got = np.asarray(at(jnp.array([0, 1, 2, 3, 100])))
    expected = [0.0, 0.0, 1 - 2**-0.75, 1 - 3**-0.75, 0.9]  # 1 - 100**-0.75 = 0.968 > 0.9
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    np.testing.assert_array_equal(
        np.asarray(ema.decay_schedule(0.9, 0.0)(jnp.array([1, 2]))), np.float32([0, 0.9])
    )


def test_train_step_updates_the_ema_by_the_hand_formula_over_three_steps():
    parallel = create_data_parallel("shard_map", devices=jax.devices()[:2])
    model = create_model(
        "resnet20", stage_widths=(4, 8, 8), stem_width=4, num_classes=4,
        **parallel.model_overrides(),
    )  # fmt: skip
    tx = optim.create_optimizer(tiny_synthetic_config().optimizer, lambda step: 0.1)
    state = create_train_state(model, tx, seed=0, image_shape=(8, 8, 3), ema=True)
    decay = ema.decay_schedule(0.5, warmup_power=1.0)  # 0, 1/2, then min(2/3, 0.5)
    step = steps.compile_train_step(parallel, model=model, tx=tx, ema_decay=decay)
    state = parallel.replicate(state)
    rng = np.random.default_rng(0)
    expected = None
    for d in (0.0, 0.5, 0.5):
        batch = {
            "image": rng.standard_normal((4, 8, 8, 3)).astype(np.float32),
            "label": rng.integers(0, 4, 4).astype(np.int32),
        }
        state, _ = step(state, parallel.shard_batch(batch))
        host = jax.device_get(parallel.unreplicate(state))
        raw = leaves({"params": host.params, "batch_stats": host.batch_stats})
        expected = (
            raw
            if expected is None
            else [d * e + (1 - d) * r for e, r in zip(expected, raw, strict=True)]
        )
        for got, want in zip(leaves(host.ema), expected, strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    assert differ(host.ema, {"params": host.params, "batch_stats": host.batch_stats})


@pytest.fixture(scope="module")
def ema_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ema")
    config = tiny_synthetic_config(ema_decay=0.9, eval_every_steps=3)
    result = train_and_evaluate(config, str(workdir))
    return config, workdir, result


def test_the_ema_is_checkpointed_and_restored_bitwise_and_inference_takes_it(ema_run):
    config, workdir, result = ema_run
    final = jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), result["state"]))
    variables, meta = restore.load_variables(workdir)
    assert meta["step"] == 6
    for a, b in zip(leaves(variables), leaves(final.ema), strict=True):
        np.testing.assert_array_equal(a, b)
    raw, _ = restore.load_variables(workdir, use_ema=False)
    for a, b in zip(leaves(raw), leaves(final.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert differ(raw, variables)
    as_dict = {"params": 1, "batch_stats": 2, "ema": {"params": 3, "batch_stats": 4}}
    assert ema.variables_for_inference(as_dict) == {"params": 3, "batch_stats": 4}
    assert ema.variables_for_inference(as_dict, use_ema=False) == {"params": 1, "batch_stats": 2}


def test_eval_reports_the_ema_beside_the_raw_weights(ema_run):
    config, workdir, result = ema_run
    evaluation = result["eval"]
    assert {"top1", "top5", "loss", "ema_top1", "ema_top5", "ema_loss"} <= set(evaluation)
    # The EMA's figures are those of its weights evaluated as the raw ones are.
    spec = run_spec.resolve(config, num_devices=8, process_count=1)
    parallel = create_data_parallel(spec.config.parallelism)
    model = builder.build(spec, parallel).model
    final = jax.device_get(jax.tree.map(lambda x: x.addressable_data(0), result["state"]))
    as_raw = final.replace(params=final.ema["params"], batch_stats=final.ema["batch_stats"])
    eval_fn = steps.compile_eval_step(parallel, model=model)
    sums = eval_sums(spec, eval_fn, parallel.replicate(as_raw.replace(ema=None)), parallel)
    alone = steps.mean_metrics(sums)
    assert alone["top1"] == evaluation["ema_top1"]
    np.testing.assert_allclose(alone["loss"], evaluation["ema_loss"], rtol=1e-6)
    rows = [line for line in open(workdir / "metrics.jsonl") if '"eval"' in line]
    assert len(rows) == 2 and all('"ema_top1"' in row for row in rows)


def test_a_run_with_ema_mixup_and_randaugment_killed_by_sigkill_resumes_exactly(tmp_path):
    flags = (
        "--config.num_train_steps=8",
        "--config.ema_decay=0.9",
        "--config.mixup_alpha=0.2",
        "--config.cutmix_alpha=1.0",
        "--config.data.dataset=digits",  # Grain's pipeline, which applies auto_augment.
        "--config.data.workers=0",
        "--config.data.auto_augment=rand-m9-mstd0.5-inc1",
    )
    straight = Run(tmp_path, tmp_path / "straight", delay=0.0, flags=flags)
    assert straight.finish() == 0, "\n".join(straight.log[-40:])
    workdir = tmp_path / "killed"
    run = Run(tmp_path, workdir, delay=0.0, flags=flags)
    # The k-th save request waits for save k-1 before it writes: after the third request
    # (step 6), step 2's checkpoint is complete.
    assert all(run.wait_for("SAVE") for _ in range(3))
    run.proc.send_signal(signal.SIGKILL)
    assert run.finish() == -signal.SIGKILL
    rerun = Run(tmp_path, workdir, delay=0.0, flags=flags)
    assert rerun.finish() == 0, "\n".join(rerun.log[-40:])
    assert 2 <= rerun.records("RESTORE")[0][0] < 8
    want, got = final_state(tmp_path / "straight", 8), final_state(workdir, 8)
    for a, b in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    averaged, raw = (
        restore.load_variables(workdir)[0],
        restore.load_variables(workdir, use_ema=False)[0],
    )
    assert differ(averaged, raw)
