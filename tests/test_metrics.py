"""What a run shows and records: the console progress bar and the TensorBoard event file."""

import io
import os

import pytest

from resnet_jax.training.metrics import MetricWriter, ProgressBar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def show(bar: ProgressBar) -> None:
    bar.message("resnet20 on digits")
    bar.update(100, eta_s=None, loss=2.302585, top1=0.125, lr=0.1, **{"img/s": 1234.5})
    bar.update(200, eta_s=75.3, loss=1.2345678, top1=0.5, lr=0.0999, **{"img/s": 1234.5})
    bar.message("eval @ step 200: top-1 0.5000")
    bar.close()


def test_progress_is_one_plain_line_per_update_in_logs_and_pipes():
    stream = io.StringIO()
    show(ProgressBar(250, stream=stream))
    assert stream.getvalue() == (
        "resnet20 on digits\n"
        "100/250 [########............], loss=2.3, top1=0.125, lr=0.1, img/s=1234.5\n"
        "200/250 [################....], loss=1.23, top1=0.5, lr=0.0999, img/s=1234.5, "
        "ETA=01:15\n"
        "eval @ step 200: top-1 0.5000\n"
    )


def test_progress_on_a_terminal_redraws_one_line_and_messages_stay_whole():
    stream = Terminal()
    show(ProgressBar(250, stream=stream))
    out = stream.getvalue()
    assert "\rresnet20 on digits\n" in out and "\reval @ step 200: top-1 0.5000\n" in out
    last = "200/250 [################....], loss=1.23, top1=0.5, lr=0.0999, img/s=1234.5, ETA=01:15"
    assert out.endswith("\r" + last + "\n")  # The bar stays, on its own line, after close.
    assert out.count("\n") == 3  # Two messages and the closed bar: updates redraw in place.


def test_a_disabled_progress_bar_writes_nothing():
    stream = Terminal()
    show(ProgressBar(250, enabled=False, stream=stream))
    assert stream.getvalue() == ""


def test_tensorboard_event_file_holds_each_numeric_value_under_split_slash_name(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    writer = MetricWriter(str(tmp_path))
    writer.write("train", 2, {"loss": 2.5, "top1": 0.25, "note": "not a number"})
    writer.write("train", 4, {"loss": 1.5, "top1": 0.5})
    writer.write("eval", 4, {"top1": 0.75, "count": 10})
    writer.close()
    (name,) = os.listdir(tmp_path / "tensorboard")
    assert name.startswith("events.out.tfevents.") and name.endswith(f".{os.getpid()}")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = ["eval/count", "eval/top1", "train/loss", "train/top1"]
    assert sorted(events.Tags()["scalars"]) == tags
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(2, 2.5), (4, 1.5)]
    assert [(e.step, e.value) for e in events.Scalars("eval/top1")] == [(4, 0.75)]
    assert events.Scalars("eval/count")[0].value == pytest.approx(10)
