"""One weights format (orbax variables + card.json) and one loader, ``resnet_jax.load``, for
converted weights and training workdirs, including directories written before the card."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from PIL import Image
from recipes import random_variables, tree_digest

import resnet_jax
from resnet_jax import card
from resnet_jax.build import model_from_name
from resnet_jax.data.presets import Preset, get_preset
from resnet_jax.images import load_rgb, preprocess, transforms
from resnet_jax.inference import Predictor, random_predictor
from resnet_jax.weights import CARD_FILE, kind, save_converted

# Written by tests/fixtures/make_legacy_weights.py with the loader that preceded card.json.
FIXTURES = pathlib.Path(__file__).parent / "fixtures"
EXPECTED = np.load(FIXTURES / "legacy_expected.npz")
DIGITS = tuple(str(i) for i in range(10))


@pytest.fixture
def legacy(tmp_path):
    """A copy of a legacy fixture, and a check that loading it wrote nothing."""
    copies = []

    def copy(name: str) -> pathlib.Path:
        shutil.copytree(FIXTURES / name, tmp_path / name)
        copies.append((tmp_path / name, tree_digest(tmp_path / name)))
        return tmp_path / name

    yield copy
    for path, digest in copies:
        assert tree_digest(path) == digest, f"loading {path.name} changed its files"


def logits(loaded, x) -> np.ndarray:
    return np.asarray(jax.jit(loaded.model.apply)(loaded.variables, x))


def test_legacy_converted_directory_loads_with_its_recorded_logits(legacy):
    path = legacy("legacy_converted")
    loaded = resnet_jax.load(path)
    assert kind(path) == "weights"
    np.testing.assert_allclose(
        logits(loaded, EXPECTED["legacy_converted_inputs"]),
        EXPECTED["legacy_converted_logits"],
        rtol=0,
        atol=1e-6,
    )
    card = loaded.card
    assert card.architecture == "resnet18"
    assert card.arguments == {"stage_widths": [4, 4, 8, 8], "stem_width": 4, "num_classes": 5}
    assert loaded.preset == Preset("tiny", resize=18, crop=16, interpolation="bicubic")
    assert loaded.classes is None and loaded.model.num_classes == 5
    assert card.origin == {
        "framework": "torchvision",
        "weights": "random (seed 0)",
        "preset_note": "a hand-made preset for the fixture",
    }
    assert card.verification["logits_max_abs"] == 1.5e-6


def test_legacy_workdir_loads_with_its_recorded_logits(legacy):
    path = legacy("legacy_workdir")
    loaded = resnet_jax.load(path)
    assert kind(path) == "workdir"
    np.testing.assert_allclose(
        logits(loaded, EXPECTED["legacy_workdir_inputs"]),
        EXPECTED["legacy_workdir_logits"],
        rtol=0,
        atol=1e-6,
    )
    assert loaded.classes == DIGITS
    assert (loaded.preset.crop, loaded.preset.resize_mode, loaded.preset.mean) == (
        8,
        "squash",
        (0.5, 0.5, 0.5),
    )
    card = loaded.card
    assert card.architecture == "resnet20" and card.arguments["num_classes"] == 10
    assert card.arguments["stage_widths"] == [4, 8, 8]
    assert card.origin == {"workdir": str(path), "step": 2, "dataset": "digits"}


def test_saved_weights_are_variables_plus_a_card(tmp_path):
    ref = random_predictor("resnet18", get_preset("timm_rsb"), num_classes=3, stem_width=8)
    out = save_converted(
        tmp_path / "w",
        ref.variables,
        architecture="resnet18",
        source="timm",
        weights="resnet18.a1_in1k",
        preset=ref.preset,
        overrides={"num_classes": 3, "stem_width": 8},
        class_names=["cat", "dog", "eel"],
        verification={"logits_max_abs": 2e-6},
    )
    card = json.loads((out / CARD_FILE).read_text())
    assert card == {
        "format": "resnet_jax.weights",
        "version": 1,
        "architecture": "resnet18",
        "arguments": {"num_classes": 3, "stem_width": 8},
        "preset": get_preset("timm_rsb").to_dict()
        | {"mean": [0.485, 0.456, 0.406]}
        | {"std": [0.229, 0.224, 0.225]},
        "classes": ["cat", "dog", "eel"],
        "origin": {"framework": "timm", "weights": "resnet18.a1_in1k", "preset_note": None},
        "verification": {"logits_max_abs": 2e-6},
    }
    assert sorted(p.name for p in out.iterdir()) == ["0", CARD_FILE]
    model, variables, preset, classes, _ = resnet_jax.load(out)
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, ref.variables))
    assert (model.num_classes, model.stem_width) == (3, 8)
    assert (preset, classes) == (get_preset("timm_rsb"), ("cat", "dog", "eel"))


def test_thousand_classes_without_names_are_imagenets(tmp_path):
    ref = random_predictor("resnet18", get_preset("torchvision_v1"), stage_widths=(4, 4, 4, 4))
    out = save_converted(
        tmp_path / "w",
        ref.variables,
        architecture="resnet18",
        source="torchvision",
        weights="x.pth",
        preset=ref.preset,
        overrides={"stage_widths": (4, 4, 4, 4)},
    )
    classes = resnet_jax.load(out).classes
    assert len(classes) == 1000 and classes[0] == "tench"


def test_keras_resnet50_v2_round_trips_with_its_preset(tmp_path):
    model = model_from_name("resnet50_v2")
    variables = random_variables(model)
    out = save_converted(
        tmp_path / "w",
        variables,
        architecture="resnet50_v2",
        source="keras",
        weights="ResNet50V2 imagenet",
        preset=get_preset("keras_tf"),
        verification={"logits_max_abs": 3e-6},
    )
    loaded = resnet_jax.load(out)
    assert loaded.model == model
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded.variables, variables))
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype(np.float32)
    forward = jax.jit(lambda m, v: m.apply(v, x), static_argnums=0)  # One compile: m == model.
    diff = np.abs(np.asarray(forward(loaded.model, loaded.variables) - forward(model, variables)))
    assert diff.max() <= 1e-6
    card = loaded.card
    assert (card.architecture, card.arguments) == ("resnet50_v2", {"num_classes": 1000})
    assert (model.variant, model.conv_bias, model.bn_epsilon) == ("v2", True, 1.001e-5)
    assert loaded.preset == get_preset("keras_tf") and loaded.preset.mode == "tf"
    assert len(loaded.classes) == 1000 and loaded.classes[0] == "tench"
    assert card.origin["framework"] == "keras" and card.verification == {"logits_max_abs": 3e-6}


def test_weights_directory_is_replaced_only_when_asked(tmp_path):
    """Saving onto weights with a card.json refuses without overwrite and touches nothing; with
    it the directory is replaced whole: nothing of the earlier one is left, other files too."""
    first = resnet_jax.load(FIXTURES / "legacy_converted")
    second = jax.tree.map(lambda v: v + 1, first.variables)
    kwargs = dict(architecture="resnet18", source="torchvision", preset=first.preset)
    kwargs["overrides"] = first.card.arguments
    path = save_converted(tmp_path / "w", first.variables, weights="a", **kwargs)
    (path / "notes.txt").write_text("about these weights")
    before = tree_digest(path)
    with pytest.raises(FileExistsError) as e:
        save_converted(path, second, weights="b", **kwargs)
    assert str(e.value) == f"{path} is not empty; choose a new directory or pass overwrite=True."
    assert tree_digest(path) == before
    save_converted(path, second, weights="b", overwrite=True, **kwargs)
    assert sorted(p.name for p in path.iterdir()) == ["0", CARD_FILE]
    loaded = resnet_jax.load(path)
    assert loaded.card.origin["weights"] == "b"
    assert jax.tree.all(jax.tree.map(np.array_equal, loaded.variables, second))


def test_legacy_directory_is_replaced_only_when_asked(legacy, tmp_path):
    path = shutil.copytree(FIXTURES / "legacy_converted", tmp_path / "old")
    ref = resnet_jax.load(path)
    kwargs = dict(architecture="resnet18", source="torchvision", weights="b", preset=ref.preset)
    kwargs["overrides"] = ref.card.arguments
    with pytest.raises(FileExistsError, match="is not empty; choose a new directory or pass"):
        save_converted(path, ref.variables, **kwargs)
    save_converted(path, ref.variables, overwrite=True, **kwargs)
    assert resnet_jax.load(path).card.origin["weights"] == "b"
    assert not (path / "0" / "metadata").exists()


def test_preset_transforms_feed_the_model_as_predict_does(tmp_path):
    path = tmp_path / "a.png"
    rgb = np.random.default_rng(0).integers(0, 256, (30, 20, 3), np.uint8)
    Image.fromarray(rgb).save(path)
    loaded = resnet_jax.load(FIXTURES / "legacy_workdir")
    transform = transforms(loaded.preset)
    x = transform(path)
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    np.testing.assert_array_equal(transform(load_rgb(path)), x)
    np.testing.assert_array_equal(x, preprocess(load_rgb(path), loaded.preset))
    probs = jax.nn.softmax(logits(loaded, x[None]))[0]
    predictor = Predictor(loaded.model, loaded.variables, loaded.preset, loaded.classes, 4)
    (prediction,), _ = predictor.predict([path], top_k=1)
    assert prediction.labels == (DIGITS[int(np.argmax(probs))],)
    assert prediction.probabilities[0] == pytest.approx(float(probs.max()), abs=1e-6)


def test_a_folder_that_holds_neither_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileNotFoundError) as e:
        resnet_jax.load(tmp_path)
    assert str(e.value) == (
        f"{tmp_path} is neither a converted checkpoint nor a training workdir (no config.json "
        "or checkpoints/ in it); give the folder that resnet_jax.convert or train.py wrote."
    )
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        resnet_jax.load(tmp_path / "missing")
    ref = resnet_jax.load(FIXTURES / "legacy_converted")
    with pytest.raises(FileExistsError, match="holds something other than a converted checkpoint"):
        save_converted(
            tmp_path, ref.variables, architecture="resnet18", source="torchvision", weights="a",
            preset=ref.preset, overrides=ref.card.arguments, overwrite=True,
        )  # fmt: skip
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


SAVE_ON_ANOTHER_DEVICE = """
import os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=16"
import jax
from resnet_jax.data.presets import get_preset
from resnet_jax.inference import random_predictor
from resnet_jax.weights import save_converted

ref = random_predictor("resnet18", get_preset("timm_rsb"), num_classes=3, stem_width=8)
on_last = jax.device_put(ref.variables, jax.devices()[15])
save_converted(sys.argv[1], on_last, architecture="resnet18", source="timm", weights="t",
               preset=ref.preset, overrides={"num_classes": 3, "stem_width": 8})
"""


def test_weights_saved_on_another_device_load_here(tmp_path):
    """Weights written on a device this host lacks (cpu:15 here; a TPU core, a GPU) load onto
    this host's first device, through resnet_jax.load and through fine-tuning's restore."""
    import subprocess
    import sys

    from resnet_jax.card import restore_variables

    out = tmp_path / "w"
    subprocess.run([sys.executable, "-c", SAVE_ON_ANOTHER_DEVICE, str(out)], check=True)
    _, variables, *_ = resnet_jax.load(out)
    raw = restore_variables(out)
    for tree in (variables, raw):
        leaves = jax.tree.leaves(tree)
        assert len(leaves) > 0 and {x.devices().pop() for x in leaves} == {jax.devices()[0]}
    assert jax.tree.all(jax.tree.map(np.array_equal, variables, raw))


def test_a_converted_card_refuses_an_option_resnet_does_not_have():
    preset = get_preset("torchvision_v1")
    with pytest.raises(ValueError, match=r"Unknown option\(s\) \['bogus'\] for 'resnet18'"):
        card.converted_card("resnet18", "torchvision", "x", preset, overrides={"bogus": 1})
    ten = card.converted_card("resnet18", "torchvision", "x", preset, overrides={"num_classes": 10})
    assert ten.arguments == {"num_classes": 10} and ten.classes is None
    default = card.converted_card("resnet18", "torchvision", "x", preset)
    assert default.arguments == {"num_classes": 1000} and default.classes[0] == "tench"
