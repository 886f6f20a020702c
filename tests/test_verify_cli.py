"""``python -m resnet_jax.verify``: the table, the exit status, saving, and clear errors for
missing networks and bad files."""

import os
import pickle
import subprocess
import sys

import pytest

pytest.importorskip("torch")

import torch  # noqa: E402

from resnet_jax.convert import import_torchvision, load_converted  # noqa: E402
from resnet_jax.verify import main  # noqa: E402

SMALL = ["--image-size", "64", "--random-inputs", "1"]


def test_random_resnet18_passes_prints_the_table_and_saves(tmp_path, capsys):
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--save", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0
    assert "resnet18: torchvision (random (seed 0)) vs resnet_jax, 64x64, float32" in out
    assert "stage   block  shape" in out and "layer4      1  (3, 2, 2, 512)" in out
    assert "top-1 agreement: 3/3" in out and "PASS" in out
    name, _, metadata = load_converted(tmp_path)
    assert name == "resnet18" and metadata["preset"]["name"] == "torchvision_v1"
    assert metadata["verification"]["passed"] and metadata["verification"]["image_size"] == 64
    assert metadata["verification"]["inputs"] == ["random 0", "china.jpg", "flower.jpg"]


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
    assert "does not fit resnet18 (torchvision layout): 0 missing, 80 unexpected" in err


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
