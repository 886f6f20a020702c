"""Converted checkpoints: orbax variables plus metadata (source, architecture, variant,
weights, preprocessing preset), restored exactly with the model they belong to."""

import jax
import numpy as np
import pytest

from resnet_jax import create_model
from resnet_jax.convert import load_converted, read_metadata, save_converted
from resnet_jax.convert.common import abstract_variables
from resnet_jax.data.presets import Preset, get_preset


def numpy_variables(name: str, seed: int = 0, **overrides) -> dict:
    from flax import traverse_util

    rng = np.random.default_rng(seed)
    flat = {
        path: rng.standard_normal(leaf.shape).astype(leaf.dtype)
        for path, leaf in abstract_variables(create_model(name, **overrides)).items()
    }
    return traverse_util.unflatten_dict(flat)


def test_saved_checkpoint_restores_variables_and_metadata_exactly(tmp_path):
    variables = numpy_variables("resnet50_v2")
    preset = get_preset("keras_tf")
    save_converted(
        tmp_path / "ckpt",
        variables,
        architecture="resnet50_v2",
        source="keras",
        weights="ResNet50V2 imagenet",
        preset=preset,
        verification={"logits_max_abs": 3e-6},
    )
    name, restored, metadata = load_converted(tmp_path / "ckpt")
    assert name == "resnet50_v2"
    assert jax.tree.all(
        jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), variables, restored)
    )
    assert metadata["source"] == "keras" and metadata["variant"] == "v2"
    assert metadata["weights"] == "ResNet50V2 imagenet"
    assert Preset.from_dict(metadata["preset"]) == preset
    assert metadata["verification"] == {"logits_max_abs": 3e-6}


def test_model_overrides_travel_with_the_checkpoint(tmp_path):
    variables = numpy_variables("resnet18", num_classes=10)
    save_converted(
        tmp_path / "ckpt",
        variables,
        architecture="resnet18",
        source="torchvision",
        weights="finetuned.pth",
        preset=get_preset("torchvision_v2"),
        overrides={"num_classes": 10},
    )
    name, restored, metadata = load_converted(tmp_path / "ckpt")
    assert metadata["num_classes"] == 10 and metadata["model_overrides"] == {"num_classes": 10}
    assert restored["params"]["fc"]["kernel"].shape == (512, 10)


def test_existing_checkpoint_is_replaced_only_when_asked(tmp_path):
    kwargs = dict(
        architecture="resnet18",
        source="torchvision",
        weights="a",
        preset=get_preset("torchvision_v1"),
    )
    save_converted(tmp_path / "ckpt", numpy_variables("resnet18", 0), **kwargs)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_converted(tmp_path / "ckpt", numpy_variables("resnet18", 1), **kwargs)
    save_converted(tmp_path / "ckpt", numpy_variables("resnet18", 1), overwrite=True, **kwargs)
    _, restored, _ = load_converted(tmp_path / "ckpt")
    np.testing.assert_array_equal(
        restored["params"]["fc"]["bias"], numpy_variables("resnet18", 1)["params"]["fc"]["bias"]
    )


def test_foreign_directories_are_neither_loaded_nor_replaced(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(FileNotFoundError, match="No converted checkpoint"):
        read_metadata(tmp_path)
    with pytest.raises(FileExistsError, match="other than a converted checkpoint"):
        save_converted(
            tmp_path,
            numpy_variables("resnet18"),
            architecture="resnet18",
            source="torchvision",
            weights="a",
            preset=get_preset("torchvision_v1"),
            overwrite=True,
        )
    assert (tmp_path / "notes.txt").read_text() == "keep me"
