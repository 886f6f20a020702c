"""A rerun in a workdir continues that run or stops with nothing changed: another model or a
changed schedule is refused (unless allowed), and metrics.jsonl records every step once."""

import json
import shutil

import pytest
from recipes import TINY_STEPS, tree_digest
from recipes import tiny_synthetic_config as tiny_config

from resnet_jax import checkpoint
from resnet_jax.training import loop, train_and_evaluate
from resnet_jax.training.metrics import read_metrics
from resnet_jax.training.validate import ConfigError

pytestmark = pytest.mark.usefixtures("fast_compile")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 6-step run: checkpoints at 2, 4 and 6, an evaluation at 6."""
    workdir = tmp_path_factory.mktemp("finished")
    result = train_and_evaluate(tiny_config(eval_every_steps=TINY_STEPS), str(workdir))
    return workdir, result


@pytest.fixture(scope="module")
def unsaved(tmp_path_factory):
    """A finished run without checkpoints: only config.json and metrics.jsonl record it."""
    workdir = tmp_path_factory.mktemp("unsaved")
    train_and_evaluate(tiny_config(keep_checkpoints=0), str(workdir))
    return workdir


def copy(workdir, tmp_path):
    shutil.copytree(workdir, tmp_path / "w")
    return tmp_path / "w"


def steps_of(workdir, split):
    return [r["step"] for r in read_metrics(str(workdir)) if r["split"] == split]


def test_another_model_is_refused_with_checkpointing_off_and_nothing_changes(finished, unsaved):
    for workdir in (finished[0], unsaved):
        before = tree_digest(workdir)
        for keep in (0, 3):
            config = tiny_config(keep_checkpoints=keep, eval_every_steps=TINY_STEPS)
            config.model.name = "resnet32"
            with pytest.raises(checkpoint.CheckpointError) as error:
                train_and_evaluate(config, str(workdir))
            message = str(error.value)
            assert "is of model 'resnet20'" in message, message
            assert "but the config asks for 'resnet32'" in message
            assert "Use a new --workdir" in message
            assert tree_digest(workdir) == before  # No checkpoints/ made, no file touched.


def test_a_changed_schedule_is_refused_naming_each_field(finished, unsaved):
    for workdir, where in ((finished[0], "checkpoints (step 6)"), (unsaved, "config.json")):
        before = tree_digest(workdir)
        config = tiny_config(num_train_steps=8, batch_size=32, eval_every_steps=TINY_STEPS)
        config.optimizer.base_learning_rate = 0.2
        with pytest.raises(ConfigError) as error:
            train_and_evaluate(config, str(workdir))
        message = str(error.value)
        assert where in message
        assert (
            "another config: batch_size: 16 -> 32; num_train_steps: 6 -> 8; "
            "optimizer.base_learning_rate: 0.1 -> 0.2." in message
        )
        assert "Use a new --workdir" in message
        assert "--config.allow_config_change=True" in message
        assert tree_digest(workdir) == before


def test_watching_and_storing_fields_change_freely(finished, tmp_path):
    workdir = copy(finished[0], tmp_path)
    config = tiny_config(
        eval_every_steps=TINY_STEPS,
        log_every_steps=3,
        checkpoint_every_steps=3,
        keep_checkpoints=1,
        async_checkpointing=False,
        restore_fallback=True,
        preemption_check_every_steps=5,
        prefetch_batches=1,
        progress_bar=True,
        num_eval_steps=1,
        eval_batch_size=64,
        backend="cpu_fast",  # the same numbers, computed another way
    )
    result = train_and_evaluate(config, str(workdir))  # Restores step 6: nothing to train.
    assert result["step"] == TINY_STEPS
    assert json.loads((workdir / "config.json").read_text())["log_every_steps"] == 3


def test_more_steps_continue_the_run_when_allowed(finished, tmp_path):
    workdir = copy(finished[0], tmp_path)
    config = tiny_config(num_train_steps=8, eval_every_steps=TINY_STEPS, allow_config_change=True)
    result = train_and_evaluate(config, str(workdir))
    assert result["step"] == 8
    assert steps_of(workdir, "train") == [2, 4, 6, 8]
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
    assert ckpt.all_steps() == [4, 6, 8]
    ckpt.close()
    assert json.loads((workdir / "config.json").read_text())["num_train_steps"] == 8
    train_and_evaluate(config, str(workdir))  # The workdir's run is now the 8-step one.


def test_a_resumed_run_records_each_step_once(finished, tmp_path):
    """A kill after step 6's rows but before its checkpoint: the rerun resumes from step 4."""
    workdir = copy(finished[0], tmp_path)
    shutil.rmtree(workdir / "checkpoints" / str(TINY_STEPS))
    metrics = workdir / "metrics.jsonl"
    rows = metrics.read_text().splitlines(keepends=True)
    kept = "".join(r for r in rows if json.loads(r)["step"] <= 4)
    killed = metrics.read_bytes() + b'{"split": "train", "step": 8, "lo'  # Cut mid-write.
    metrics.write_bytes(killed)

    train_and_evaluate(tiny_config(eval_every_steps=TINY_STEPS), str(workdir))
    after = metrics.read_text()
    assert after.startswith(kept) and len(after) > len(kept)  # Rows up to 4 byte for byte.
    assert steps_of(workdir, "train") == [2, 4, 6] and steps_of(workdir, "eval") == [6]
    old = {(r["split"], r["step"]): r for r in read_metrics(str(finished[0]))}
    for row in read_metrics(str(workdir)):  # The exact resume retrains the same numbers.
        assert row["loss"] == old[row["split"], row["step"]]["loss"]

    before = metrics.read_bytes()
    again = train_and_evaluate(tiny_config(eval_every_steps=TINY_STEPS), str(workdir))
    assert again["eval"]["loss"] == finished[1]["eval"]["loss"]  # Evaluated again ...
    assert metrics.read_bytes() == before  # ... but step 6's eval is recorded once.


def test_an_evaluation_error_comes_after_the_final_checkpoint(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise ValueError("The evaluation split yielded no batches.")

    monkeypatch.setattr(loop, "eval_sums", fail)
    with pytest.raises(ValueError, match="no batches"):
        train_and_evaluate(tiny_config(eval_every_steps=TINY_STEPS), str(tmp_path))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.all_steps() == [2, 4, 6]
    ckpt.close()


def test_a_damaged_config_json_is_named_and_nothing_changes(tmp_path):
    workdir = tmp_path / "w"
    workdir.mkdir()
    (workdir / "config.json").write_text('{"model": {"name": "resnet20"')  # cut off mid-write
    before = tree_digest(workdir)
    with pytest.raises(ConfigError, match=r"config.json is not readable JSON .* new --workdir"):
        train_and_evaluate(tiny_config(), str(workdir))
    assert tree_digest(workdir) == before


def test_turning_the_ema_on_over_checkpoints_without_one_is_refused_once(finished):
    workdir = finished[0]
    before = tree_digest(workdir)
    for allow in (False, True):  # Even when config changes are allowed: no EMA to restore.
        config = tiny_config(ema_decay=0.9, eval_every_steps=TINY_STEPS, restore_fallback=True)
        config.allow_config_change = allow
        with pytest.raises(ConfigError) as error:
            train_and_evaluate(config, str(workdir))
        assert str(error.value) == (
            f"ema_decay=0.9 asks for a weight EMA, but the checkpoints in {workdir}/checkpoints "
            "(step 6) were written without one (ema_decay=0), so there is none to resume. Rerun "
            "with --config.ema_decay=0 to continue this run, or use a new --workdir to train "
            "with an EMA from the start; nothing was changed."
        )
        assert tree_digest(workdir) == before  # Nothing renamed as unreadable, nothing written.


def test_turning_the_ema_off_over_checkpoints_with_one_is_refused(tmp_path):
    workdir = tmp_path / "with_ema"
    train_and_evaluate(tiny_config(ema_decay=0.9, eval_every_steps=TINY_STEPS), str(workdir))
    before = tree_digest(workdir)
    for allow in (False, True):
        config = tiny_config(ema_decay=0.0, eval_every_steps=TINY_STEPS, restore_fallback=True)
        config.allow_config_change = allow
        with pytest.raises(ConfigError) as error:
            train_and_evaluate(config, str(workdir))
        assert str(error.value) == (
            f"ema_decay=0, but the checkpoints in {workdir}/checkpoints (step 6) hold a weight "
            "EMA (ema_decay=0.9): rerun with that ema_decay to continue this run, or use a new "
            "--workdir to train without one; nothing was changed."
        )
        assert tree_digest(workdir) == before
