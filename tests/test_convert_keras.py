"""Keras Applications -> Flax: ResNet50 (v1) and ResNet50V2, from the model object and from
weight files; proof that ``.weights.h5`` variables map to layers by model order."""

import os
import zipfile

os.environ.setdefault("KERAS_BACKEND", "jax")

import h5py  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from etils import epath  # noqa: E402

pytest.importorskip("keras")

from resnet_jax import create_model  # noqa: E402
from resnet_jax.convert import CheckpointMismatchError, KerasLayerOrderError  # noqa: E402
from resnet_jax.convert.inputs import sample_photographs  # noqa: E402
from resnet_jax.convert.keras import from_keras  # noqa: E402
from resnet_jax.convert.keras_layout import keras_weighted_layers  # noqa: E402
from resnet_jax.convert.numerics import build_reference, make_inputs, run_comparison  # noqa: E402

TOL = 1e-4
# Keras's own variable -> NumPy conversions warn under NumPy 2; nothing of ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
PHOTO = [p for p in sample_photographs() if p.name == "china.jpg"]


def same(a, b) -> bool:
    return jax.tree.structure(a) == jax.tree.structure(b) and jax.tree.all(
        jax.tree.map(np.array_equal, a, b)
    )


@pytest.fixture(scope="module", params=["resnet50_v1", "resnet50_v2"])
def reference(request):
    return build_reference("keras", request.param, seed=0)


@pytest.fixture(scope="module")
def weights_file(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("keras") / f"{reference.model_name}.weights.h5"
    reference.model.save_weights(path)
    return path


def assert_matches(reference, size):
    comparison = run_comparison(reference, make_inputs(reference.preset, size, 1, PHOTO), TOL)
    print(comparison.format())
    assert comparison.logits_max_abs <= TOL
    assert max(r.rel for r in comparison.rows if r.name != "logits") <= TOL
    assert all(comparison.top1) and all(comparison.top5)


@pytest.mark.parametrize("size", [224, 97])
def test_random_keras_model_matches_block_by_block(reference, size):
    assert_matches(reference, size)


def test_weights_h5_file_matches_block_by_block(reference, weights_file):
    from_file = build_reference("keras", reference.model_name, weights=str(weights_file))
    assert same(from_file.variables, reference.variables)
    assert_matches(from_file, 224)


def test_weights_file_in_a_bucket_loads_as_the_local_one(reference, weights_file, gcs):
    """Keras loads local files only: a gs:// file is copied to a local one for it."""
    remote = f"{gcs}/keras/{weights_file.name}"
    epath.Path(remote).write_bytes(weights_file.read_bytes())
    from_bucket = build_reference("keras", reference.model_name, weights=remote)
    assert from_bucket.weights == remote and same(from_bucket.variables, reference.variables)
    keras_weights = zip(from_bucket.model.get_weights(), reference.model.get_weights(), strict=True)
    assert all(np.array_equal(a, b) for a, b in keras_weights)


def test_layer_order_is_the_functional_models_order(reference):
    keras_order = [(type(x).__name__, x.name) for x in reference.model.layers if x.weights]
    assert keras_weighted_layers(create_model(reference.model_name)) == keras_order


def test_weights_h5_maps_by_order_without_recorded_names(reference, weights_file, tmp_path):
    path = tmp_path / "unnamed.weights.h5"
    path.write_bytes(weights_file.read_bytes())
    with h5py.File(path, "r+") as f:  # Keras 3 releases that did not record layer names
        for group in f["layers"].values():
            if "vars" in group and "name" in group["vars"].attrs:
                del group["vars"].attrs["name"]
    assert same(from_keras(path, reference.model_name), reference.variables)


def _swap(path, a, b, keep_names):
    with h5py.File(path, "r+") as f:
        layers = f["layers"]
        layers.move(a, "tmp")
        layers.move(b, a)
        layers.move("tmp", b)
        if not keep_names:
            for group in layers.values():
                if "vars" in group and "name" in group["vars"].attrs:
                    del group["vars"].attrs["name"]


def test_shuffled_weights_h5_with_names_is_refused(reference, weights_file, tmp_path):
    path = tmp_path / "shuffled.weights.h5"
    path.write_bytes(weights_file.read_bytes())
    _swap(path, "batch_normalization_1", "batch_normalization_2", keep_names=True)
    with pytest.raises(KerasLayerOrderError, match="layers/batch_normalization_1 holds"):
        from_keras(path, reference.model_name)


def test_shuffled_weights_h5_without_names_fails_on_shapes(reference, weights_file, tmp_path):
    path = tmp_path / "shuffled.weights.h5"
    path.write_bytes(weights_file.read_bytes())
    _swap(path, "conv2d", "conv2d_1", keep_names=False)
    with pytest.raises(CheckpointMismatchError, match="conv1_conv/kernel: \\(1, 1, 64, 64\\)"):
        from_keras(path, reference.model_name)


def test_legacy_h5_layouts_convert_like_the_model(reference, tmp_path):
    from keras.src.legacy.saving.legacy_h5_format import save_weights_to_hdf5_group

    keras3 = tmp_path / "keras3.h5"  # model.save('x.h5'): groups under model_weights
    with h5py.File(keras3, "w") as f:
        save_weights_to_hdf5_group(f.create_group("model_weights"), reference.model)
    keras2 = tmp_path / "keras2.h5"  # Keras 2 save_weights: root groups, 'kernel:0' names
    with h5py.File(keras2, "w") as f:
        layers = list(reference.model.layers)
        f.attrs["layer_names"] = [x.name.encode() for x in layers]
        for layer in layers:
            group = f.create_group(layer.name)
            names = [f"{layer.name}/{w.name}:0" for w in layer.weights]
            group.attrs["weight_names"] = [n.encode() for n in names]
            for name, w in zip(names, layer.weights, strict=True):
                group.create_dataset(name, data=np.asarray(w.value))
    for path in (keras3, keras2):
        assert same(from_keras(path, reference.model_name), reference.variables)


def test_keras_archive_is_read_from_its_weights_member(reference, weights_file, tmp_path):
    path = tmp_path / "model.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
        archive.writestr("model.weights.h5", weights_file.read_bytes())
    assert same(from_keras(path, reference.model_name), reference.variables)


def test_file_of_another_variant_or_depth_fails_listing_keys(reference, weights_file):
    other = "resnet50_v1" if reference.model_name == "resnet50_v2" else "resnet50_v2"
    with pytest.raises(CheckpointMismatchError) as info:
        from_keras(weights_file, other)
    message = str(info.value)
    assert "missing" in message and "unexpected" in message
    if other == "resnet50_v2":
        assert "conv2_block1_preact_bn/gamma" in info.value.missing
        assert "conv1_bn/gamma" in info.value.unexpected
    with pytest.raises(CheckpointMismatchError) as info:
        from_keras(weights_file, reference.model_name.replace("50", "101"))
    assert "conv4_block23_1_conv/kernel" in info.value.missing
