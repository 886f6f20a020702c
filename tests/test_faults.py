"""Runs that meet trouble: NaN/inf losses, damaged checkpoints, another model's workdir, half
written checkpoints and SIGTERM. Each one stops clearly or recovers, and never loses the last
good checkpoint."""

import os
import shutil
import signal

import jax
import numpy as np
import pytest
from recipes import TINY_STEPS, tree_digest
from recipes import tiny_synthetic_config as tiny_config

from resnet_jax import checkpoint
from resnet_jax.data import pipeline
from resnet_jax.parallel import create_data_parallel
from resnet_jax.training import train_and_evaluate
from resnet_jax.training.faults import NonFiniteError, PreemptionWatcher

TOTAL = TINY_STEPS


pytestmark = pytest.mark.usefixtures("fast_compile")


def host_leaves(state) -> list[np.ndarray]:
    return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted run with checkpoints at steps 2, 4 and 6."""
    workdir = tmp_path_factory.mktemp("straight")
    result = train_and_evaluate(tiny_config(), str(workdir))
    state = create_data_parallel("shard_map").unreplicate(result["state"])
    return workdir, host_leaves(state), state


def poison(monkeypatch, at_step: int) -> None:
    """Makes the training batch of step ``at_step`` hold an infinite pixel."""
    real = pipeline.create_train_iterator

    def iterator(config, *, start_step=0, **kw):
        for step, batch in enumerate(real(config, start_step=start_step, **kw), start_step + 1):
            if step == at_step:
                batch = {**batch, "image": batch["image"].copy()}
                batch["image"][0, 0, 0, 0] = np.inf
            yield batch

    monkeypatch.setattr(pipeline, "create_train_iterator", iterator)


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, monkeypatch
):
    poison(monkeypatch, at_step=3)
    with pytest.raises(NonFiniteError, match=r"at step 3\b.*last good checkpoint, step 2") as e:
        train_and_evaluate(tiny_config(log_every_steps=100), str(tmp_path))
    assert e.value.step == 3
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    assert ckpt.all_steps() == [2]  # Step 4 (NaN) was never saved.
    ckpt.close()


def test_nonfinite_steps_are_skipped_when_configured(tmp_path, monkeypatch):
    poison(monkeypatch, at_step=3)
    config = tiny_config(nonfinite="skip", checkpoint_every_steps=1, keep_checkpoints=6)
    result = train_and_evaluate(config, str(tmp_path))
    assert result["step"] == TOTAL
    assert all(np.isfinite(x).all() for x in host_leaves(result["state"]))
    rows = [r for r in checkpoint_metrics(tmp_path) if r["split"] == "train"]
    assert [r.get("nonfinite_steps", 0) for r in rows] == [0, 1, 0]
    ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"))
    like = create_data_parallel("shard_map").unreplicate(result["state"])
    before, _ = ckpt.restore(like, step=2)
    after, _ = ckpt.restore(like, step=3)
    ckpt.close()
    assert int(after.step) == 3  # The batch is consumed; params, BN and momentum are kept.
    for a, b in zip(
        jax.tree.leaves((before.params, before.batch_stats, before.opt_state)),
        jax.tree.leaves((after.params, after.batch_stats, after.opt_state)),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def checkpoint_metrics(workdir):
    from resnet_jax.training.metrics import read_metrics

    return read_metrics(str(workdir))


# A failed orbax read leaves an asyncio callback behind; it is harmless.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_unreadable_checkpoint_names_its_step_and_falls_back_on_request(straight, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(straight[0], workdir)
    data = workdir / "checkpoints" / str(TOTAL) / "state"
    for path in data.rglob("*"):
        if path.is_file() and path.parent.name == "d":
            path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # Truncated.
    before = tree_digest(workdir)
    unreadable = rf"step {TOTAL} in .*checkpoints cannot be read"
    with pytest.raises(checkpoint.CheckpointReadError, match=unreadable) as e:
        train_and_evaluate(tiny_config(), str(workdir))
    assert "restore_fallback=True" in str(e.value) and "step 4" in str(e.value)
    assert tree_digest(workdir) == before

    result = train_and_evaluate(tiny_config(restore_fallback=True), str(workdir))
    for a, b in zip(straight[1], host_leaves(result["state"]), strict=True):
        np.testing.assert_array_equal(a, b)  # Resumed at 4, retrained 5 and 6: same bits.
    names = sorted(os.listdir(workdir / "checkpoints"))
    assert names == ["2", "4", "6", f"{TOTAL}.unreadable"]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_flipped_bits_in_a_checkpoint_are_detected(straight, tmp_path):
    shutil.copytree(straight[0] / "checkpoints", tmp_path / "c")
    for chunk in (tmp_path / "c" / "4" / "state").glob("**/d/*"):
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2] ^= 1  # One bit in each array data file.
        chunk.write_bytes(bytes(data))
    ckpt = checkpoint.Checkpointer(str(tmp_path / "c"))
    with pytest.raises(checkpoint.CheckpointReadError, match=r"step 4 in .*/c cannot be read"):
        ckpt.restore(straight[2], step=4)
    ckpt.restore(straight[2], step=6)  # The others still restore.
    ckpt.close()


def test_another_models_checkpoint_stops_before_training_and_changes_nothing(straight):
    workdir = straight[0]
    before = tree_digest(workdir)
    other_model = tiny_config()
    other_model.model.name = "resnet32"
    wider = tiny_config()
    wider.model.kwargs.stage_widths = (4, 8, 16)
    for config in (other_model, wider):
        with pytest.raises(checkpoint.CheckpointError, match="nothing was deleted"):
            train_and_evaluate(config, str(workdir))
    assert tree_digest(workdir) == before


def test_partial_writes_are_never_restored_and_are_removed_on_resume(straight, tmp_path):
    workdir = tmp_path / "work"
    shutil.copytree(straight[0], workdir)
    partial = workdir / "checkpoints" / "8.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(workdir / "checkpoints" / "6", partial)
    (partial / "state" / "_METADATA").write_text("{")  # Half written.
    ckpt = checkpoint.Checkpointer(str(workdir / "checkpoints"))
    assert ckpt.latest_step() == 6
    ckpt.close()
    before = tree_digest(workdir)
    other_model = tiny_config()
    other_model.model.name = "resnet32"
    with pytest.raises(checkpoint.CheckpointError, match="nothing was deleted"):
        train_and_evaluate(other_model, str(workdir))
    assert tree_digest(workdir) == before  # Not this run's workdir: the partial write stays.
    result = train_and_evaluate(tiny_config(), str(workdir))  # Restores 6: nothing to train.
    assert result["step"] == TOTAL
    assert not partial.exists()


def test_sigterm_sets_the_stop_flag_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGTERM)
    with PreemptionWatcher() as watcher:
        assert not watcher.should_stop(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert watcher.should_stop(2)
    assert signal.getsignal(signal.SIGTERM) is before


def test_config_names_bad_fault_settings_before_compiling():
    from resnet_jax.training.validate import ConfigError, check_config

    config = tiny_config(nonfinite="ignore", preemption_check_every_steps=0)
    with pytest.raises(ConfigError, match="nonfinite 'ignore'.*\n.*preemption_check_every_steps=0"):
        check_config(config, num_devices=8, process_count=1)
