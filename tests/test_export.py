"""Export to StableHLO, ONNX and LiteRT: each file run in its own runtime gives the JAX
model's logits on real photographs; int8 keeps the trained digits model's accuracy; bad input
is refused with nothing written; predict takes the exported files."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import onnx
import pytest
from etils import epath
from PIL import Image
from recipes import load_config

from benchmarks import export_bench
from resnet_jax.convert import save_converted
from resnet_jax.convert.inputs import sample_photographs
from resnet_jax.data.digits import write_digits_folder
from resnet_jax.data.presets import Preset
from resnet_jax.export import ExportError, export_checkpoint, exporter, formats, portable
from resnet_jax.export.__main__ import main as export_main
from resnet_jax.export.runtime import LiteRTRunner, OnnxRunner
from resnet_jax.images import batches, list_images
from resnet_jax.inference import load_predictor, random_predictor
from resnet_jax.models import layers
from resnet_jax.predict import main as predict_main
from resnet_jax.training import train_and_evaluate

SIZE = 64
PRESET = Preset("photo64", resize=72, crop=SIZE)
CLASSES = [f"class_{i}" for i in range(10)]
ALL = ("stablehlo", "onnx", "litert", "litert_int8")


def relative(a, b) -> float:
    return float(np.abs(np.asarray(a) - b).max() / np.abs(b).max())


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    """Eight real photographs: scikit-learn's two, and crops and mirror images of them."""
    folder = tmp_path_factory.mktemp("photos")
    for i, src in enumerate(sample_photographs()[:2]):
        img = Image.open(src).convert("RGB")
        w, h = img.size
        views = [
            img,
            img.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            img.crop((0, 0, w // 2, h // 2)),
            img.crop((w // 3, h // 4, w, h)),
        ]
        for j, view in enumerate(views):
            view.save(folder / f"{i}{j}.jpg")
    return folder


@pytest.fixture(scope="module")
def photos(photo_folder):
    return next(batches(list_images([photo_folder]), PRESET, 8, []))[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Seeded random ResNet-18 (10 classes) as a converted checkpoint, 64 px inputs."""
    predictor = random_predictor("resnet18", PRESET, num_classes=10)
    path = tmp_path_factory.mktemp("converted") / "resnet18"
    save_converted(
        path,
        jax.device_get(predictor.variables),
        architecture="resnet18",
        source="resnet_jax",
        weights="random",
        preset=PRESET,
        overrides={"num_classes": 10},
        class_names=CLASSES,
    )
    return path


@pytest.fixture(scope="module")
def exported(checkpoint, photo_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("exported") / "resnet18"
    export_checkpoint(checkpoint, out, ALL, calibration=photo_folder)
    return out


@pytest.fixture(scope="module")
def jax_logits(checkpoint, photos):
    p = load_predictor(checkpoint)
    return np.asarray(jax.jit(p.model.apply)(p.variables, photos))


def test_export_writes_every_format_with_preset_and_class_names(exported):
    meta = json.loads((exported / "export.json").read_text())
    assert sorted(os.listdir(exported)) == sorted(["export.json", *exporter.FILES.values()])
    assert Preset.from_dict(meta["preset"]) == PRESET
    assert meta["class_names"] == CLASSES
    assert meta["input"]["shape"] == ["batch", SIZE, SIZE, 3]
    assert meta["calibration"]["images"] == 8
    for name in ("stablehlo", "onnx", "litert"):
        assert meta["checks"][name]["max_relative_difference"] <= 1e-4, name
    assert not [p for p in exported.parent.iterdir() if ".tmp-" in p.name]


def test_stablehlo_runs_without_resnet_jax(exported, photos, jax_logits, tmp_path):
    """Deserialized in a fresh process that never imports resnet_jax, batch 1 and 8."""
    np.save(tmp_path / "photos.npy", photos)
    script = textwrap.dedent(f"""
        import sys, jax, numpy as np
        x = np.load({str(tmp_path / "photos.npy")!r})
        exp = jax.export.deserialize(bytearray(open({str(exported / "model.stablehlo")!r},
                                                    "rb").read()))
        np.save({str(tmp_path / "one.npy")!r}, exp.call(x[:1]))
        np.save({str(tmp_path / "eight.npy")!r}, exp.call(x))
        assert "resnet_jax" not in sys.modules
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=tmp_path)
    assert relative(np.load(tmp_path / "one.npy"), jax_logits[:1]) <= 1e-6
    assert relative(np.load(tmp_path / "eight.npy"), jax_logits) <= 1e-6


def test_onnx_matches_jax_on_photographs(exported, photos, jax_logits):
    model = onnx.load(exported / "model.onnx")
    onnx.checker.check_model(model, full_check=True)
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch
    run = OnnxRunner(exported / "model.onnx")
    for n in (1, 8, 3):
        logits = run(photos[:n])
        assert relative(logits, jax_logits[:n]) <= 1e-4
        top5 = np.argsort(-logits, -1)[:, :5]
        np.testing.assert_array_equal(top5, np.argsort(-jax_logits[:n], -1)[:, :5])


def test_litert_float32_matches_jax(exported, photos, jax_logits):
    run = LiteRTRunner(exported / "model_float32.tflite")
    for n in (1, 8):
        logits = run(photos[:n])
        assert relative(logits, jax_logits[:n]) <= 1e-4
        np.testing.assert_array_equal(logits.argmax(-1), jax_logits[:n].argmax(-1))


def test_predict_takes_exported_files(exported, checkpoint, photo_folder, tmp_path, capsys):
    """Same output format and the same top-5 as the checkpoint for ONNX and LiteRT float32."""
    outputs = {}
    for name, ckpt in (
        ("jax", checkpoint),
        ("onnx", exported / "model.onnx"),
        ("tflite", exported / "model_float32.tflite"),
    ):
        out = tmp_path / f"{name}.json"
        assert (
            predict_main(
                [
                    str(photo_folder),
                    "--checkpoint",
                    str(ckpt),
                    "--batch-size",
                    "4",
                    "--output",
                    str(out),
                ]
            )
            == 0
        )
        outputs[name] = json.loads(out.read_text())
    assert len(outputs["jax"]) == 8
    for name in ("onnx", "tflite"):
        for a, b in zip(outputs[name], outputs["jax"], strict=True):
            assert a.keys() == b.keys() and a["path"] == b["path"]
            assert a["indices"] == b["indices"] and a["labels"] == b["labels"]
            np.testing.assert_allclose(a["probabilities"], b["probabilities"], atol=1e-5)
    assert "class_" in capsys.readouterr().out


def test_predict_reads_exported_files_from_a_bucket(exported, photo_folder, gcs, tmp_path):
    """The .onnx or .tflite file and export.json beside it, read through epath: the same
    predictions as from the local folder."""
    for name in ("model.onnx", "model_float32.tflite", "export.json"):
        epath.Path(gcs, "exported", name).write_bytes((exported / name).read_bytes())
    outputs = []
    for ckpt in (
        exported / "model.onnx",
        *(f"{gcs}/exported/{n}" for n in ("model.onnx", "model_float32.tflite")),
    ):
        out = tmp_path / "p.json"
        assert (
            predict_main([str(photo_folder), "--checkpoint", str(ckpt), "--output", str(out)]) == 0
        )
        outputs.append(json.loads(out.read_text()))
    assert len(outputs[0]) == 8
    for a, b in zip(outputs[0], outputs[1], strict=True):
        assert a == b
    for a, b in zip(outputs[0], outputs[2], strict=True):
        assert a["indices"] == b["indices"] and a["path"] == b["path"]


def test_features_of_an_exported_file_are_refused_before_reading_images(
    exported, photo_folder, tmp_path, capsys
):
    code = predict_main(
        [
            str(photo_folder),
            "--checkpoint",
            str(exported / "model.onnx"),
            "--output",
            str(tmp_path / "p.json"),
            "--features",
            str(tmp_path / "f.npz"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "An exported model gives logits only" in err
    assert os.listdir(tmp_path) == []


def test_bad_export_options_are_refused_before_loading(checkpoint, tmp_path, monkeypatch, capsys):
    """A non-positive sample count, an output that is a file (even with --overwrite) and a
    missing converter each get one line before the checkpoint is read."""
    with pytest.raises(SystemExit) as stop:
        export_main([str(checkpoint), "--output", str(tmp_path / "o"), "--calibration-samples=0"])
    assert stop.value.code == 2 and "must be at least 1" in capsys.readouterr().err
    a_file = tmp_path / "taken"
    a_file.write_text("keep")
    assert export_main([str(checkpoint), "--output", str(a_file), "--overwrite"]) == 2
    assert "is a file; give --output a folder" in capsys.readouterr().err
    assert a_file.read_text() == "keep"
    real_find_spec = exporter.find_spec
    monkeypatch.setattr(
        exporter, "find_spec", lambda m: None if m == "jax2onnx" else real_find_spec(m)
    )
    assert export_main([str(checkpoint), "--output", str(tmp_path / "o"), "--formats=onnx"]) == 2
    err = capsys.readouterr().err
    assert "needs jax2onnx, which is not installed: pip install 'resnet-jax[export]'" in err
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_missing_calibration_folder_is_refused(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    code = export_main(
        [str(checkpoint), "--output", str(out), "--calibration", str(tmp_path / "nowhere")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: Calibration folder") and "nowhere does not exist" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_unreadable_calibration_images_are_refused(checkpoint, photo_folder, tmp_path):
    folder = tmp_path / "calib"
    folder.mkdir()
    for p in sorted(photo_folder.iterdir())[:2]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ExportError, match=r"1 unreadable file\(s\): .*broken.jpg.*Remove them"):
        export_checkpoint(checkpoint, tmp_path / "out", ALL, calibration=folder)
    assert sorted(os.listdir(tmp_path)) == ["calib"]


def test_int8_without_calibration_is_refused(checkpoint, tmp_path):
    with pytest.raises(ExportError, match="litert_int8 needs a calibration folder"):
        export_checkpoint(checkpoint, tmp_path / "out", ["litert_int8"])
    assert os.listdir(tmp_path) == []


def test_non_empty_output_is_refused_and_kept(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ExportError, match=r"out exists and is not empty; .* --overwrite"):
        export_checkpoint(checkpoint, out)
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "mine"


def test_failure_part_way_leaves_nothing(checkpoint, tmp_path, monkeypatch):
    """The StableHLO file is written, then the ONNX converter fails: no output, no temp."""

    def broken(*args, **kwargs):
        raise RuntimeError("converter failed")

    monkeypatch.setattr(formats, "onnx", broken)
    with pytest.raises(RuntimeError, match="converter failed"):
        export_checkpoint(checkpoint, tmp_path / "out", ["stablehlo", "onnx"])
    assert os.listdir(tmp_path) == []


# The quickstart recipe, shortened: resnet20 on 24 px digits.
DIGITS_EPOCHS = 3.0


@pytest.fixture(scope="module")
def digits_workdir(tmp_path_factory):
    config = load_config("quickstart")
    config.num_epochs = DIGITS_EPOCHS
    config.progress_bar = False
    config.plot = False
    workdir = tmp_path_factory.mktemp("quickstart")
    train_and_evaluate(config, str(workdir))
    return workdir


def test_unknown_architecture_is_refused(digits_workdir, tmp_path, capsys):
    """A converted checkpoint whose card names an architecture the registry lacks."""
    predictor = load_predictor(digits_workdir)
    save_converted(
        tmp_path / "ckpt",
        predictor.variables,
        architecture="resnet20",
        source="torchvision",
        weights="hand-made",
        preset=predictor.preset,
    )
    (card,) = [
        p
        for p in (tmp_path / "ckpt").rglob("*")
        if p.is_file() and "resnet20" in p.read_text(errors="ignore")
    ]
    card.write_text(card.read_text().replace('"resnet20"', '"resnet7"'))
    code = export_main([str(tmp_path / "ckpt"), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "its architecture is not one resnet-jax builds" in err and "'resnet7'" in err
    assert not (tmp_path / "out").exists()


def test_int8_keeps_digits_accuracy(digits_workdir, tmp_path):
    """Full-integer int8 calibrated on training images: held-out top-1 within 1 point of
    float32, and the file at most 0.3x the float32 file."""
    size = load_config("quickstart").data.image_size
    train = write_digits_folder(tmp_path / "train", split="train", image_size=size)
    held_out = write_digits_folder(tmp_path / "eval", split="eval", image_size=size)
    out = export_checkpoint(
        digits_workdir, tmp_path / "out", ["litert", "litert_int8"], calibration=train
    )
    preset = load_predictor(digits_workdir).preset
    paths = list_images([held_out])
    labels = np.array([int(p.parent.name) for p in paths])
    images = np.concatenate([b for _, b in batches(paths, preset, 128, [])])
    f32 = LiteRTRunner(out / "model_float32.tflite")
    i8 = LiteRTRunner(out / "model_int8.tflite")
    acc = {
        name: float(
            np.mean(
                np.concatenate(
                    [run(images[i : i + 128]).argmax(-1) for i in range(0, len(images), 128)]
                )
                == labels
            )
        )
        for name, run in (("f32", f32), ("i8", i8))
    }
    assert len(labels) == 359
    assert acc["f32"] >= 0.9, acc
    assert abs(acc["i8"] - acc["f32"]) <= 0.01, acc
    ratio = (out / "model_int8.tflite").stat().length / (out / "model_float32.tflite").stat().length
    assert ratio <= 0.3, ratio
    print(
        f"digits held-out top-1: float32 {acc['f32']:.4f}, int8 {acc['i8']:.4f}; "
        f"int8 file {ratio:.3f}x float32"
    )


@pytest.mark.parametrize("how", portable.MAX_POOLS)
@pytest.mark.parametrize("size", [9, 10])
def test_portable_max_pool_is_exact(how, size):
    """Edge padding (and strided slices for ONNX) give nn.max_pool's numbers, odd or even."""
    x = jax.random.normal(jax.random.key(0), (2, size, size, 3))
    for pad_value in (-np.inf, 0.0):
        pool = lambda x: layers.max_pool_3x3_s2(x, pad_value)  # noqa: B023
        out = portable.evaluate(jax.make_jaxpr(pool)(x), x, max_pool=how)[0]
        np.testing.assert_array_equal(out, pool(x))


@pytest.mark.parametrize(
    "name, overrides",
    [
        ("resnet20", {}),  # CIFAR option-A shortcut: strided subsampling, zero channels
        ("resnet50_v2", {"stage_sizes": (1, 1, 1, 1), "stage_widths": (8, 8, 16, 16)}),
        ("resnet18d", {"stage_widths": (8, 8, 16, 16)}),  # average-pool shortcut
    ],
)
def test_other_families_export_to_onnx_and_litert(name, overrides, photo_folder, tmp_path):
    """Constant padding and pooling of the other families, at batch 1 and 3."""
    preset = Preset("photo32", resize=36, crop=32)
    predictor = random_predictor(name, preset, num_classes=10, **overrides)
    x = next(batches(list_images([photo_folder]), preset, 3, []))[1]
    ref = np.asarray(jax.jit(predictor.model.apply)(predictor.variables, x))
    fn = exporter._logits_fn(predictor)
    (tmp_path / "m.onnx").write_bytes(formats.onnx(fn, 32))
    (tmp_path / "m.tflite").write_bytes(formats.litert(fn, 32))
    for run in (OnnxRunner(tmp_path / "m.onnx"), LiteRTRunner(tmp_path / "m.tflite")):
        for n in (1, 3):
            assert relative(run(x[:n]), ref[:n]) <= 1e-4, (name, type(run).__name__, n)


def test_latency_benchmark_tiny(tmp_path):
    """Every runtime gets a figure at batch 1 and 8, and the record is written."""
    assert export_bench.main(["--tiny", "--output-dir", str(tmp_path)]) == 0
    (record,) = [json.loads(p.read_text()) for p in tmp_path.glob("export-*.json")]
    assert set(record["ms_per_batch"]) == set(export_bench.ROWS)
    assert all(ms[b] > 0 for ms in record["ms_per_batch"].values() for b in ("1", "8"))
    table = next(tmp_path.glob("export-*.md")).read_text()
    assert all(label in table for label in export_bench.LABELS.values())
