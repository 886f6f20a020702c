"""``python -m resnet_jax.verify``: the table, the exit status, saving, and clear errors for
missing networks and bad files."""

import os
import pickle
import re
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from resnet_jax.convert import import_torchvision, numerics  # noqa: E402
from resnet_jax.verify import main  # noqa: E402
from resnet_jax.weights import read_card  # noqa: E402

SMALL = ["--image-size", "64", "--random-inputs", "1"]


def test_random_resnet18_passes_prints_the_table_and_saves(tmp_path, capsys):
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--save", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "resnet18: torchvision (random (seed 0)) vs resnet_jax, 64x64, float32" in out
    assert "stage   block  shape" in out and "layer4      1  (3, 2, 2, 512)" in out
    assert "top-1 agreement: 3/3" in out and "PASS" in out
    card = read_card(tmp_path)
    assert card.architecture == "resnet18" and card.preset.name == "torchvision_v1"
    assert card.verification["passed"] and card.verification["image_size"] == 64
    assert card.verification["inputs"] == ["random 0", "china.jpg", "flower.jpg"]


def test_over_tolerance_exits_one_and_names_the_rows(capsys):
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--tolerance", "1e-12"])
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL: over tolerance: " in out and "logits" in out.splitlines()[-1]


def test_weights_file_is_verified_and_named(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(import_torchvision().models.resnet18().state_dict(), tmp_path / "r18.pth")
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--weights",
                 str(tmp_path / "r18.pth")])  # fmt: skip
    assert code == 0
    assert f"({tmp_path / 'r18.pth'})" in capsys.readouterr().out


def test_file_of_another_depth_exits_two_with_the_key_report(tmp_path, capsys):
    torch.save(import_torchvision().models.resnet34().state_dict(), tmp_path / "r34.pth")
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--weights",
                 str(tmp_path / "r34.pth")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "does not fit resnet18 (torchvision/timm layout): 0 missing, 80 unexpected" in err


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pth_that_would_run_code_exits_two_without_running_it(tmp_path, capsys):
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"fc.weight": _RunsCode(tmp_path / "ran")}, f, protocol=2)
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--weights",
                 str(tmp_path / "evil.pth")])  # fmt: skip
    assert code == 2 and "Refused to load" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()


def test_published_torchvision_weights_offline_say_what_and_how(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached download
    code = main(["--source", "torchvision", "--model", "resnet18", "--weights", "IMAGENET1K_V1"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Could not download torchvision ResNet18_Weights.IMAGENET1K_V1" in err
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in err
    assert "--weights /path/to/resnet18-f37072fd.pth" in err


def test_keras_imagenet_weights_offline_say_what_and_how(monkeypatch, capsys):
    from resnet_jax.convert import keras_reference

    def offline(app, weights, size=224):
        raise OSError(f"no network for {app} {weights}")

    monkeypatch.setattr(keras_reference, "build_keras_model", offline)
    code = main(["--source", "keras", "--model", "resnet50_v1", "--weights", "imagenet"])
    err = capsys.readouterr().err
    assert code == 2
    assert (
        "Could not download Keras ResNet50 'imagenet' weights from "
        f"{keras_reference.IMAGENET_WEIGHTS}: OSError: no network for ResNet50 imagenet\n"
        "Without network access, download the file elsewhere and pass it instead: --weights "
        "/path/to/resnet50_weights_tf_dim_ordering_tf_kernels.h5 (the legacy .h5 Keras "
        "downloads to ~/.keras/models)"
    ) in err


def test_unknown_published_name_lists_the_real_ones(capsys):
    code = main(["--source", "torchvision", "--model", "resnet50", "--weights", "IMAGENET1K_V3"])
    assert code == 2
    assert "published: IMAGENET1K_V1, IMAGENET1K_V2, DEFAULT" in capsys.readouterr().err


def test_module_runs_as_a_command():
    result = subprocess.run(
        [sys.executable, "-m", "resnet_jax.verify", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--source {keras,timm,torchvision}" in result.stdout
    assert "Exit status: 0 pass, 1 over tolerance, 2 error." in result.stdout


def scaled_head(factor: float, wrong: bool = False):
    """A build_reference that multiplies the fc layer by ``factor`` on both sides (logits grow,
    the conversion stays exact); ``wrong`` swaps two input channels of one converted kernel."""
    build = numerics.build_reference

    def build_reference(*args, **kwargs):
        reference = build(*args, **kwargs)
        fc = reference.model.fc  # new tensors: the converted arrays share the old ones' memory
        fc.weight, fc.bias = (torch.nn.Parameter(p.detach() * factor) for p in fc.parameters())
        params = dict(reference.variables["params"])
        params["fc"] = {k: v * factor for k, v in params["fc"].items()}
        if wrong:
            conv = dict(params["layer3_0"]["conv1"])
            conv["kernel"] = np.asarray(conv["kernel"])[:, :, [1, 0, *range(2, 128)], :]
            params["layer3_0"] = {**params["layer3_0"], "conv1": conv}
        reference.variables = {**reference.variables, "params": params}
        return reference

    return build_reference


def figures(out: str, line_start: str) -> list[float]:
    line = next(x for x in out.splitlines() if x.startswith(line_start))
    return [float(v) for v in re.findall(r"\d\.\d+e[+-]\d+", line)]


def test_logits_in_the_hundreds_are_judged_relative_to_their_scale(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(numerics, "build_reference", scaled_head(560.0))
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--save",
                 str(tmp_path / "ckpt")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and out.splitlines()[-2] == "PASS"
    abs_diff, rel, scale = figures(out, "logits max|diff|: ")
    assert 500 < scale < 1000  # float32 steps are 6e-5 here: absolute 1e-4 is a few roundings
    assert abs_diff > 1e-4 and rel < 1e-5 and rel == pytest.approx(abs_diff / scale, rel=1e-3)
    assert figures(out, "logits  ") == pytest.approx([abs_diff, scale, rel], rel=1e-3)
    block_abs, block_rel = figures(out, "stem, blocks, pooled: largest max|diff| ")
    assert 0 < block_abs < 1e-4 and 0 < block_rel < 1e-5
    assert figures(out, "layer4      1")[2] <= block_rel  # every block row: abs, ref, rel
    assert "tolerance: every row, logits included, max|diff|/max|ref| <= 1e-04" in out
    summary = read_card(tmp_path / "ckpt").verification
    assert summary["passed"] and summary["logits_max_abs"] > 1e-4
    assert summary["logits_rel"] < 1e-5 and summary["max_block_abs"] < 1e-4


def test_a_wrong_conversion_with_large_logits_still_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(numerics, "build_reference", scaled_head(560.0, wrong=True))
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--save",
                 str(tmp_path / "ckpt")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 1
    assert out.splitlines()[-1] == (
        "FAIL: over tolerance: layer3_0, layer3_1, layer4_0, layer4_1, pooled, logits"
    )
    assert figures(out, "logits max|diff|: ")[1] > 1e-2
    assert not (tmp_path / "ckpt").exists()


def test_existing_save_directory_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    def no_work(*args, **kwargs):
        raise AssertionError("verify ran although --save cannot be written")

    monkeypatch.setattr(numerics, "verify", no_work)
    (tmp_path / "mine.txt").write_text("keep me")
    code = main(["--source", "torchvision", "--model", "resnet18", "--save", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        f"error: {tmp_path} is not empty; choose a new directory or pass --overwrite.\n"
    )
    code = main(["--source", "torchvision", "--model", "resnet18", "--save", str(tmp_path),
                 "--overwrite"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        f"error: {tmp_path} holds something other than a converted checkpoint; not replacing it.\n"
    )
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "source, model, missing",
    [("torchvision", "resnet18", "torch"), ("timm", "resnet18d", "torch"),
     ("keras", "resnet50_v1", "keras")],
)  # fmt: skip
def test_missing_framework_says_what_to_install(source, model, missing, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, missing, None)  # import fails as if not installed
    code = main(["--source", source, "--model", model])
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    assert captured.err == (
        f"error: --source {source} needs {missing}, which is not installed; install the "
        "reference frameworks with: pip install -e '.[reference]' (in the resnet-jax "
        "checkout)\n"
    )
