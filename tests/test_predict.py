"""Predict and extract features from image files, exact to the weights' own framework."""

import csv
import json
import os

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from resnet_jax.convert import save_converted  # noqa: E402
from resnet_jax.convert.inputs import sample_photographs  # noqa: E402
from resnet_jax.data.presets import get_preset  # noqa: E402
from resnet_jax.images import load_rgb, preprocess  # noqa: E402
from resnet_jax.inference import load_predictor, random_predictor  # noqa: E402
from resnet_jax.predict import main  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The two photographs scikit-learn ships, plus odd formats made from them."""
    folder = tmp_path_factory.mktemp("photos")
    china, flower = sample_photographs()[:2]
    paths = []
    for i, src in enumerate((china, flower)):
        img = Image.open(src)
        paths.append(folder / f"{i}_rgb.jpg")
        img.save(paths[-1])
    img = Image.open(china).crop((40, 0, 360, 300))
    paths.append(folder / "2_rgba.png")
    img.convert("RGBA").save(paths[-1])
    paths.append(folder / "3_gray.png")
    img.convert("L").save(paths[-1])
    paths.append(folder / "4_cmyk.jpg")
    img.convert("CMYK").save(paths[-1])
    return folder, paths


@pytest.fixture(scope="module")
def bad_folder(tmp_path_factory, photos):
    folder = tmp_path_factory.mktemp("mixed")
    Image.open(photos[1][0]).resize((64, 48)).save(folder / "good.jpg")
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("not an image")
    (folder / "truncated.jpg").write_bytes((folder / "good.jpg").read_bytes()[:200])
    return folder


def top5(logits) -> list[list[int]]:
    return np.argsort(-np.asarray(logits), axis=-1, kind="stable")[:, :5].tolist()


def test_torchvision_chain_gives_torchvisions_own_top5(photos, tmp_path):
    import torch

    from resnet_jax.convert.torchvision import build_reference

    ref = build_reference("resnet18", seed=3)
    save_converted(
        tmp_path / "ckpt",
        ref.variables,
        architecture="resnet18",
        source="torchvision",
        weights=ref.weights,
        preset=ref.preset,
    )
    predictor = load_predictor(tmp_path / "ckpt")
    assert predictor.preset.name == "torchvision_v1" and len(predictor.class_names) == 1000

    from resnet_jax.convert import import_torchvision

    transform = import_torchvision().models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    with torch.no_grad():
        batch = torch.stack([transform(load_rgb(p)) for p in photos[1]])
        theirs = top5(ref.model.eval()(batch).numpy())
        ours_pixels = np.stack([preprocess(load_rgb(p), predictor.preset) for p in photos[1]])
    np.testing.assert_allclose(ours_pixels, batch.permute(0, 2, 3, 1).numpy(), atol=1e-5)
    with jax.default_matmul_precision("highest"):
        predictions, skipped = predictor.predict([photos[0]], top_k=5)
    assert skipped == []
    assert [p.path for p in predictions] == [str(p) for p in photos[1]]
    assert [list(p.indices) for p in predictions] == theirs
    assert predictions[0].labels[0] == predictor.class_names[theirs[0][0]]


def test_keras_chain_gives_keras_own_top5(photos, tmp_path):
    import keras

    from resnet_jax.convert.keras_reference import build_reference

    ref = build_reference("resnet50_v1", seed=1)
    save_converted(
        tmp_path / "ckpt",
        ref.variables,
        architecture="resnet50_v1",
        source="keras",
        weights=ref.weights,
        preset=ref.preset,
    )
    predictor = load_predictor(tmp_path / "ckpt")
    assert predictor.preset.name == "keras_caffe"
    paths = photos[1][:3]
    images = np.stack(
        [keras.utils.img_to_array(keras.utils.load_img(p, target_size=(224, 224))) for p in paths]
    )
    x = keras.applications.resnet.preprocess_input(images)
    with jax.default_matmul_precision("highest"):
        theirs = top5(ref.model(x, training=False))
        predictions, _ = predictor.predict(paths, top_k=5)
    assert [list(p.indices) for p in predictions] == theirs


def test_odd_image_modes_become_rgb(photos):
    for path in photos[1]:
        img = load_rgb(path)
        assert img.mode == "RGB"
    gray = np.asarray(load_rgb(photos[1][3]))
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()


def test_sixteen_bit_png_is_scaled_to_eight_bits(tmp_path):
    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    rgb = np.asarray(load_rgb(tmp_path / "deep.png"))
    assert rgb.shape == (64, 64, 3)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == round(65520 * 255 / 65535)


def test_bad_files_are_skipped_and_listed(bad_folder):
    predictor = random_predictor(
        "resnet18",
        get_preset("torchvision_v1"),
        batch_size=2,
        stage_widths=(8, 8, 8, 8),
        stem_width=8,
    )
    predictions, skipped = predictor.predict([bad_folder], top_k=3)
    assert [os.path.basename(p.path) for p in predictions] == ["good.jpg"]
    assert sorted(os.path.basename(p) for p, _ in skipped) == [
        "empty.jpg",
        "notes.png",
        "truncated.jpg",
    ]
    assert all("not a readable image" in why for _, why in skipped)
    assert len(predictions[0].indices) == 3
    probs = predictions[0].probabilities
    assert list(probs) == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6


def test_features_are_pooled_embeddings_per_file(photos):
    predictor = random_predictor(
        "resnet50",
        get_preset("torchvision_v2"),
        batch_size=4,
        stage_widths=(8, 8, 8, 16),
        stem_width=8,
    )
    names, feats, skipped = predictor.features([photos[0]])
    assert feats.shape == (5, 64) and feats.dtype == np.float32
    assert names == [str(p) for p in photos[1]] and skipped == []
    alone, one, _ = predictor.features([photos[1][1]])
    np.testing.assert_allclose(one[0], feats[1], rtol=1e-5, atol=1e-6)  # batching-invariant


def test_command_line_writes_csv_json_and_npz(bad_folder, tmp_path, capsys):
    args = [str(bad_folder), "--random-init", "--model", "resnet18", "--top-k", "2"]
    assert main([*args, "--output", str(tmp_path / "p.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert [r["rank"] for r in rows] == ["1", "2"] and rows[0]["path"].endswith("good.jpg")
    assert main([*args, "--output", str(tmp_path / "p.json")]) == 0
    [record] = json.load(open(tmp_path / "p.json"))
    assert len(record["indices"]) == 2 and record["labels"][0]
    assert main([*args, "--features", str(tmp_path / "f.npz")]) == 0
    saved = np.load(tmp_path / "f.npz")
    assert saved["features"].shape == (1, 512) and saved["paths"][0].endswith("good.jpg")
    err = capsys.readouterr().err
    assert "empty.jpg" in err and "3 file(s) skipped" in err
