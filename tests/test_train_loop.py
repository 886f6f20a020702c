"""The training loop end to end on the digits: exact resume, its outputs, exact evaluation."""

import json
import os

import jax
import ml_collections
import numpy as np
import pytest
from recipes import load_config

from resnet_jax import checkpoint
from resnet_jax.build import build_model
from resnet_jax.data import digits, grain_pipeline, pipeline
from resnet_jax.parallel import create_data_parallel
from resnet_jax.training import optim, steps, train_and_evaluate
from resnet_jax.training.evaluate import sum_batches
from resnet_jax.training.state import create_train_state

TOTAL = 6


pytestmark = pytest.mark.usefixtures("fast_compile")


def tiny_config() -> ml_collections.ConfigDict:
    """The quickstart recipe shrunk to a 1-block-per-stage ResNet on 8x8 digits."""
    config = load_config("quickstart")
    config.model.kwargs = ml_collections.ConfigDict(
        {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}
    )
    config.data.image_size = 8
    config.batch_size = 32
    config.eval_batch_size = 64
    config.num_train_steps = TOTAL
    config.optimizer.warmup_epochs = 0.1
    config.log_every_steps = 2
    config.eval_every_steps = -1
    config.checkpoint_every_steps = TOTAL // 2
    config.progress_bar = False
    config.plot = False
    return config


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("straight"))
    config = tiny_config()
    config.plot = True
    config.eval_every_steps = TOTAL
    result = train_and_evaluate(config, workdir)
    return workdir, result


def host(state):
    return jax.device_get(create_data_parallel("shard_map").unreplicate(state))


def test_resume_is_exact(straight_run, tmp_path, monkeypatch):
    """N steps straight == N/2 steps, a crash, a restart from the checkpoint, N/2 more."""
    workdir = str(tmp_path)
    real_save = checkpoint.Checkpointer.save

    def save_then_crash(self, step, state, meta, **kw):
        real_save(self, step, state, meta, **kw)
        if step == TOTAL // 2:
            raise Interrupted()

    monkeypatch.setattr(checkpoint.Checkpointer, "save", save_then_crash)
    with pytest.raises(Interrupted):
        train_and_evaluate(tiny_config(), workdir)
    monkeypatch.setattr(checkpoint.Checkpointer, "save", real_save)
    assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [3]

    opened = []  # The input state each training iterator is opened at.
    real_open = grain_pipeline.create_train_iterator
    monkeypatch.setattr(
        grain_pipeline,
        "create_train_iterator",
        lambda *a, **kw: opened.append(kw["state"]) or real_open(*a, **kw),
    )
    resumed = train_and_evaluate(tiny_config(), workdir)
    straight = straight_run[1]
    assert resumed["step"] == straight["step"] == TOTAL
    a, b = host(straight["state"]), host(resumed["state"])
    assert int(b.step) == TOTAL
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)  # Bitwise: same program, same data, same order.
    assert resumed["train"]["loss"] == straight["train"]["loss"]
    # The straight run's mid-run save (its buffers then donated to the next step) is intact.
    ckpt_a = checkpoint.Checkpointer(os.path.join(straight_run[0], "checkpoints"))
    ckpt_b = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"))
    mid_a, meta_a = ckpt_a.restore(a, step=TOTAL // 2)
    mid_b, meta_b = ckpt_b.restore(a, step=TOTAL // 2)
    for x, y in zip(jax.tree.leaves(mid_a), jax.tree.leaves(mid_b), strict=True):
        np.testing.assert_array_equal(x, y)
    position = {"next_example": 96, "epoch": 0, "epoch_offset": 96, "local_batch": 32}
    assert meta_a["data"] == {
        "seed": 0,
        "step": TOTAL // 2,
        "global_batch_size": 32,
        "input": {"pipeline": "grain", "seed": 0, "process_count": 1, **position},
    }
    assert opened == [meta_b["data"]["input"]]  # Resumed at the position the checkpoint holds.


def test_a_checkpoint_of_another_architecture_is_refused(straight_run):
    workdir = straight_run[0]
    config = tiny_config()
    config.model.kwargs.stage_widths = (4, 8, 16)
    with pytest.raises(checkpoint.CheckpointError, match="use a new --workdir|Use a new --workdir"):
        train_and_evaluate(config, workdir)
    assert os.listdir(os.path.join(workdir, "checkpoints"))  # Nothing deleted.


def test_run_leaves_config_metrics_tensorboard_checkpoint_and_plot(straight_run):
    workdir, result = straight_run
    files = set(os.listdir(workdir))
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "curves.png"} <= files
    assert json.load(open(os.path.join(workdir, "config.json")))["model"]["name"] == "resnet20"
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints")), key=int)[-1] == str(TOTAL)
    assert os.listdir(os.path.join(workdir, "tensorboard"))[0].startswith("events.out.tfevents")
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [2, 4, 6]
    for key in ("loss", "top1", "learning_rate", "images_per_sec", "step_time", "epoch"):
        assert np.isfinite(train[-1][key]), key
    (eval_row,) = [r for r in rows if r["split"] == "eval"]
    assert eval_row["count"] == digits.num_examples("eval")
    assert set(eval_row) >= {"top1", "top5", "loss", "step"}
    assert result["eval"]["top1"] == eval_row["top1"]


def test_tensorboard_reads_the_event_file(straight_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(os.path.join(straight_run[0], "tensorboard"))
    events.Reload()
    assert {"train/loss", "train/images_per_sec", "eval/top1", "eval/top5"} <= set(
        events.Tags()["scalars"]
    )
    assert [e.step for e in events.Scalars("train/loss")] == [2, 4, 6]
    (top1,) = events.Scalars("eval/top1")
    assert top1.value == pytest.approx(straight_run[1]["eval"]["top1"])


def test_evaluation_counts_every_example_once():
    """359 digits in batches of 64 over 8 devices: the padded tail is masked out."""
    config = tiny_config()
    info = pipeline.get_dataset_info(config.data)
    assert info.num_eval % config.eval_batch_size != 0
    parallel = create_data_parallel("shard_map")
    model = build_model(config, info.num_classes, parallel=parallel)
    tx = optim.create_optimizer(config.optimizer, lambda step: 0.1)
    state = create_train_state(model, tx, seed=0, image_shape=(8, 8, 3))
    eval_fn = steps.compile_eval_step(parallel, model=model)
    batches = list(pipeline.create_eval_iterator(config.data, global_batch_size=64))
    sums = sum_batches(eval_fn, parallel.replicate(state), batches, parallel, local_batch_size=64)
    got = steps.mean_metrics(sums)

    real = np.concatenate([b["mask"] for b in batches]) > 0
    images = np.concatenate([b["image"] for b in batches])[real]
    labels = np.concatenate([b["label"] for b in batches])[real]
    assert got["count"] == len(labels) == info.num_eval
    np.testing.assert_array_equal(np.sort(labels), np.sort(digits.load_digits_split("eval", 8)[1]))
    logits = np.asarray(model.apply(state.variables, images, train=False))
    top5 = np.argsort(-logits, axis=1)[:, :5]
    assert got["top1"] == pytest.approx(np.mean(logits.argmax(1) == labels), abs=1e-6)
    assert got["top5"] == pytest.approx(np.mean((top5 == labels[:, None]).any(1)), abs=1e-6)
    loss = np.mean(np.asarray(optim.cross_entropy(logits, labels)))
    assert got["loss"] == pytest.approx(loss, rel=1e-5)


def test_pmap_run_evaluates_checkpoints_and_restores(tmp_path):
    config = tiny_config()
    config.parallelism = "pmap"
    config.num_train_steps = 2
    config.optimizer.warmup_epochs = 0.0
    config.eval_every_steps = 2
    first = train_and_evaluate(config, str(tmp_path))
    assert first["eval"]["count"] == digits.num_examples("eval")
    again = train_and_evaluate(config, str(tmp_path))  # Restores step 2: nothing to train.
    assert again["step"] == 2
    assert again["eval"] == first["eval"]
