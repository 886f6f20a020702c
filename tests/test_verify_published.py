"""Published weight files passed by path keep their preprocessing: torchvision's by the sha256
prefix their URL's file name carries, timm's by their tag; a look-alike name with another
hash is warned about and treated as unknown."""

import importlib.util

import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:
    pytest.skip("timm is not installed", allow_module_level=True)

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from resnet_jax.convert import import_timm, import_torchvision  # noqa: E402
from resnet_jax.convert.published import file_sha256, recognise  # noqa: E402
from resnet_jax.convert.timm import preset_for as timm_preset_for  # noqa: E402
from resnet_jax.convert.timm import published_files as timm_files  # noqa: E402
from resnet_jax.convert.torchvision import published_files as torchvision_files  # noqa: E402
from resnet_jax.data.presets import IMAGENET_MEAN  # noqa: E402
from resnet_jax.verify import main  # noqa: E402
from resnet_jax.weights import read_card  # noqa: E402

SMALL = ["--image-size", "64", "--random-inputs", "1"]
PRESET_LIST = "keras_caffe, keras_tf, timm_rsb, torchvision_v1, torchvision_v2"


def preset_numbers(path) -> tuple:
    p = read_card(path).preset
    return p.name, p.resize, p.crop, p.interpolation, p.mean


def test_torchvision_tables_come_from_the_weights_enums():
    files = {f.file_name: (f.sha256_prefix, f.weights) for f in torchvision_files("resnet50")}
    assert files == {
        "resnet50-0676ba61.pth": ("0676ba61", "torchvision ResNet50_Weights.IMAGENET1K_V1"),
        "resnet50-11ad3fa6.pth": ("11ad3fa6", "torchvision ResNet50_Weights.IMAGENET1K_V2"),
    }


def test_file_with_a_published_sha256_prefix_saves_that_weights_preset(
    tmp_path, monkeypatch, capsys
):
    path = tmp_path / "downloaded.pth"  # any name: the hash decides
    torch.manual_seed(0)
    torch.save(import_torchvision().models.resnet50().state_dict(), path)
    digest = file_sha256(path)
    v2 = import_torchvision().models.ResNet50_Weights.IMAGENET1K_V2
    # The registry as if this file were the published V2 one: its URL names the file's hash.
    monkeypatch.setattr(v2.value, "url", f"https://example.org/resnet50-{digest[:8]}.pth")
    code = main(["--source", "torchvision", "--model", "resnet50", *SMALL, "--weights",
                 str(path), "--save", str(tmp_path / "ckpt")])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and captured.err == ""
    assert (
        f"preset torchvision_v2 (resize 232, crop 224, bilinear): {path} is the published "
        f"torchvision ResNet50_Weights.IMAGENET1K_V2 (its sha256 begins {digest[:8]} as "
        f"resnet50-{digest[:8]}.pth's does)."
    ) in captured.out
    assert preset_numbers(tmp_path / "ckpt") == (
        "torchvision_v2", 232, 224, "bilinear", IMAGENET_MEAN
    )  # fmt: skip
    origin = read_card(tmp_path / "ckpt").origin
    assert origin["weights"] == f"{path} = ResNet50_Weights.IMAGENET1K_V2"
    assert origin["preset_note"].startswith("preset torchvision_v2 (resize 232")


def test_published_name_with_another_hash_warns_and_is_treated_as_unknown(tmp_path, capsys):
    lookalike = tmp_path / "resnet18-f37072fd.pth"  # torchvision's IMAGENET1K_V1 file name
    torch.manual_seed(0)
    torch.save(import_torchvision().models.resnet18().state_dict(), lookalike)
    code = main(["--source", "torchvision", "--model", "resnet18", *SMALL, "--weights",
                 str(lookalike)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert captured.err == (
        f"warning: {lookalike} is named like the published torchvision "
        f"ResNet18_Weights.IMAGENET1K_V1 file but its sha256 begins {file_sha256(lookalike)[:8]}"
        ", not f37072fd: treated as an unknown file (a modified or truncated download?).\n"
    )
    assert (
        f"preset torchvision_v1 (resize 256, crop 224, bilinear) assumed: {lookalike} is none "
        "of the published files (torchvision resnet18: resnet18-f37072fd.pth); if its weights "
        f"expect other preprocessing, choose it with --preset NAME, one of {PRESET_LIST}."
    ) in captured.out
    assert f"resnet18: torchvision ({lookalike}) vs resnet_jax" in captured.out


def test_timm_file_named_by_its_tag_gets_the_tags_preset(tmp_path):
    path = tmp_path / "resnet50d.a1_in1k.safetensors"
    path.write_bytes(b"not read: the name decides")
    known, warnings = recognise(path, timm_files("resnet50d"))
    assert known.key == "resnet50d.a1_in1k" and warnings == []
    preset = timm_preset_for(import_timm().create_model(known.key))
    assert (preset.name, preset.resize, preset.crop, preset.interpolation) == (
        "timm_rsb", 235, 224, "bicubic",
    )  # fmt: skip


def test_timm_tag_file_saves_its_preset_and_a_release_lookalike_is_warned_about(tmp_path, capsys):
    torch.manual_seed(0)
    state_dict = import_timm().create_model("resnet18d").state_dict()
    tagged = tmp_path / "resnet18d.ra4_e3600_r224_in1k.safetensors"
    save_file(state_dict, str(tagged))
    code = main(["--source", "timm", "--model", "resnet18d", *SMALL, "--weights", str(tagged),
                 "--save", str(tmp_path / "ckpt")])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert (
        f"preset timm_custom (resize 248, crop 224, bicubic): {tagged} is the published timm "
        "resnet18d.ra4_e3600_r224_in1k (by its name; the registry records no hash for "
        "resnet18d.ra4_e3600_r224_in1k.safetensors)."
    ) in out
    numbers = preset_numbers(tmp_path / "ckpt")
    assert numbers == ("timm_custom", 248, 224, "bicubic", (0.5, 0.5, 0.5))

    release = next(f for f in timm_files("resnet18d") if f.sha256_prefix)  # ra2's .pth
    lookalike = tmp_path / release.file_name
    torch.save(state_dict, lookalike)
    code = main(["--source", "timm", "--model", "resnet18d", *SMALL, "--weights",
                 str(lookalike)])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0
    assert "is named like the published timm resnet18d.ra2_in1k file" in captured.err
    assert f"not {release.sha256_prefix}: treated as an unknown file" in captured.err
    assert (
        f"preset timm_custom (resize 256, crop 224, bicubic) assumed: {lookalike} is none of "
        "the published files (timm resnet18d: resnet18d.TAG.safetensors (or .pth) with TAG one "
        "of ra2_in1k, ra4_e3600_r224_in1k, or a release file a tag's cfg names; this preset is "
        "that of timm's default resnet18d weights, ra2_in1k); if its weights expect other "
        f"preprocessing, choose it with --preset NAME, one of {PRESET_LIST}."
    ) in captured.out


def test_timm_download_error_says_which_file_name_keeps_the_preset(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise OSError("no network")

    monkeypatch.setattr(import_timm(), "create_model", offline)
    code = main(["--source", "timm", "--model", "resnet50d", "--weights", "a1_in1k"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Could not download timm weights resnet50d.a1_in1k" in err
    assert (
        "--weights /path/to/resnet50d.a1_in1k.safetensors: the model.safetensors of "
        "https://huggingface.co/timm/resnet50d.a1_in1k saved under that name, which tells its "
        "preprocessing\n"
    ) in err
