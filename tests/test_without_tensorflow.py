"""Training hosts need no TensorFlow: one subprocess that cannot import it, nor what only it
brings in, trains on synthetic data, an image folder and a TFDS ArrayRecord build, loads the
workdir and predicts; what does need TensorFlow (tf.data, a TFRecord build, preparing a TFDS
dataset, LiteRT) says so."""

import importlib.metadata as md
import json
import os
import re
import subprocess
import sys
import tomllib

import numpy as np
import pytest
from packaging.requirements import Requirement
from PIL import Image

from tests.recipes import REPO

# As if these modules were not installed: the path finder does not see them (find_spec gives
# None, import raises ModuleNotFoundError). sys.modules['tensorflow'] = None would not do: TFDS
# and etils take a 'tensorflow' key in sys.modules for a loaded TensorFlow.
BLOCKER = """
import importlib.machinery
import sys

HIDDEN = {hidden!r}


class Without:
    def __init__(self, finder):
        self.finder = finder

    def __getattr__(self, name):
        return getattr(self.finder, name)

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)


sys.meta_path[:] = [Without(f) if f is importlib.machinery.PathFinder else f for f in sys.meta_path]
"""


def _name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(requirements: list[str]) -> set[str]:
    """The installed distributions that ``requirements`` bring in, recursively."""
    seen, todo = set(), [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if _name(req.name) in seen:
            continue
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue
        seen.add(_name(req.name))
        for r in map(Requirement, dist.requires or []):
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in ("", *req.extras)):
                todo.append(r)
    return seen


def only_tensorflow_brings() -> list[str]:
    """The top-level modules of TensorFlow and of what only it brings in here (h5py, keras, ...):
    what a core install (pyproject's dependencies) lacks."""
    core = _closure(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"])
    modules = md.packages_distributions()
    extra = _closure(modules["tensorflow"]) - core - {"setuptools", "wheel"}  # pip's own.
    return sorted(m for m, dists in modules.items() if all(_name(d) in extra for d in dists))


DRIVER = """
import contextlib, io, json, os, sys
import ml_collections
from configs import benchmark_synthetic
from resnet_jax import load, predict
from resnet_jax.data import grain_pipeline, pipeline, prepare
from resnet_jax.export import __main__ as export
from resnet_jax.training import train_and_evaluate
from tests import tfds_tiny  # noqa: F401  (registers tiny_photos, to prepare it below)
from tests.recipes import tiny_synthetic_config

root = sys.argv[1]
out = {}


def run(name, **data):
    config = tiny_synthetic_config(
        num_train_steps=2, checkpoint_every_steps=2, eval_every_steps=2, batch_size=4,
        eval_batch_size=4, tensorboard=True, plot=True,
    )
    config.data.update({"image_size": 8, "workers": 0, **data})
    return train_and_evaluate(config, os.path.join(root, name))["eval"]


def error(call):
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return [call(), stderr.getvalue()]
    except Exception as e:
        return [type(e).__name__, str(e)]


config = benchmark_synthetic.get_config()
config.model.name = "resnet20"
config.model.kwargs = ml_collections.ConfigDict(
    {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}
)
config.data.update({"image_size": 8, "num_classes": 10})
config.update({"batch_size": 16, "num_train_steps": 2, "keep_checkpoints": 1,
               "eval_every_steps": 2, "num_eval_steps": 1, "progress_bar": False})
out["synthetic"] = train_and_evaluate(config, os.path.join(root, "synthetic"))["eval"]

digits = pipeline.default_data_config()
digits.update({"dataset": "digits", "image_size": 16, "workers": 1})
it = grain_pipeline.create_train_iterator(
    digits, global_batch_size=4, seed=0, process_index=0, process_count=1
)
out["digits"] = list(next(it)["image"].shape)

out["folder"] = run("folder", dataset="folder", folder=os.path.join(root, "train"),
                    eval_folder=os.path.join(root, "eval"))
preds = os.path.join(root, "preds.json")
jpegs = [os.path.join(root, "eval", c) for c in ("a", "b")]
out["predict"] = predict.main([*jpegs, "--checkpoint", os.path.join(root, "folder"),
                               "--top-k", "1", "--output", preds])
out["predictions"] = json.load(open(preds))
out["classes"] = list(load(os.path.join(root, "folder")).classes)

out["tfds"] = run("tfds", dataset="tiny_photos", data_dir=os.path.join(root, "array_record"))

for name, data in {
    "tfrecord": {"dataset": "tiny_photos", "data_dir": os.path.join(root, "tfrecord")},
    "tfdata": {"dataset": "folder", "folder": os.path.join(root, "train"), "pipeline": "tfdata"},
    "download": {"dataset": "tiny_photos", "data_dir": os.path.join(root, "empty"),
                 "download": True},
}.items():
    out[name] = error(lambda: run(f"run_{name}", **data))
    out[name + "_workdir"] = os.path.exists(os.path.join(root, f"run_{name}"))
out["prepare"] = error(lambda: prepare.main(["tiny_photos", f"--data_dir={root}/new"]))
out["prepare_dir"] = os.path.exists(os.path.join(root, "new"))
out["export"] = error(lambda: export.main([f"{root}/folder", f"--output={root}/exported"]))
out["export_dir"] = os.path.exists(os.path.join(root, "exported"))
out["tensorflow_module"] = "tensorflow" in sys.modules
try:
    import tensorflow  # noqa: F401
    out["import"] = "imported"
except ModuleNotFoundError as e:
    out["import"] = str(e)
print("RESULT", json.dumps(out))
"""

INSTALL = "`pip install 'resnet-jax[tf]'` adds it"


def _jpegs(root, per_class: int, seed: int) -> None:
    """16 px JPEGs of two classes: reddish 'a' and bluish 'b'."""
    rng = np.random.default_rng(seed)
    for label, colour in (("a", (200, 40, 40)), ("b", (40, 40, 200))):
        (root / label).mkdir(parents=True)
        for i in range(per_class):
            noise = rng.integers(-30, 30, (16, 16, 3))
            pixels = np.clip(np.array(colour) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / label / f"{i}.jpg", quality=95)


@pytest.fixture(scope="module")
def without_tf(tmp_path_factory):
    """The driver's results, run where TensorFlow cannot be imported; its data is made here,
    with TensorFlow (the TFDS builds)."""
    pytest.importorskip("tensorflow")
    from tests.tfds_tiny import TinyPhotos

    root = tmp_path_factory.mktemp("notf")
    _jpegs(root / "train", 6, 0)
    _jpegs(root / "eval", 3, 1)
    TinyPhotos(
        data_dir=str(root / "array_record"), file_format="array_record"
    ).download_and_prepare()
    TinyPhotos(data_dir=str(root / "tfrecord")).download_and_prepare()
    (root / "empty").mkdir()
    site = root / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCKER.format(hidden=only_tensorflow_brings()))
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "JAX_PLATFORMS": "cpu",
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(root)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return root, json.loads(line.removeprefix("RESULT "))


def test_nothing_imports_tensorflow_on_a_training_host(without_tf):
    _, out = without_tf
    assert {"tensorflow", "h5py", "keras"} <= set(only_tensorflow_brings())
    assert out["tensorflow_module"] is False
    assert out["import"] == "No module named 'tensorflow'"


def test_synthetic_digits_folder_and_tfds_array_record_train_without_tensorflow(without_tf):
    root, out = without_tf
    assert out["synthetic"]["count"] == 256.0
    assert os.listdir(root / "synthetic" / "checkpoints") == ["2"]
    assert out["digits"] == [4, 16, 16, 3]
    assert out["folder"]["count"] == 6  # The eval folder, every image once.
    assert out["tfds"]["count"] == 4  # TinyPhotos' validation split.
    for result in (out["folder"], out["tfds"]):
        correct = result["top1"] * result["count"]
        assert correct == pytest.approx(round(correct)) and np.isfinite(result["loss"])
        assert 0 <= result["top1"] <= 1
    assert (root / "folder" / "curves.png").is_file()
    assert any((root / "folder" / "tensorboard").iterdir())


def test_the_trained_workdir_loads_and_predicts_as_evaluation_did(without_tf):
    root, out = without_tf
    assert out["predict"] == 0 and out["classes"] == ["a", "b"]
    predicted = {p["path"]: p["labels"][0] for p in out["predictions"]}
    assert len(predicted) == 6
    right = sum(label == os.path.basename(os.path.dirname(p)) for p, label in predicted.items())
    assert right / 6 == pytest.approx(out["folder"]["top1"])  # Same pixels, same weights.


def test_what_needs_tensorflow_says_so_and_writes_nothing(without_tf):
    root, out = without_tf
    kind, message = out["tfrecord"]
    assert kind == "ConfigError"
    assert (
        "'tiny_photos', stored as tfrecord (which only tf.data reads), needs TensorFlow" in message
    )
    assert INSTALL in message and "convert the build to ArrayRecord" in message
    assert f"tfds convert_format --dataset_version_dir={root}/tfrecord/tiny_photos" in message
    kind, message = out["tfdata"]
    assert kind == "ConfigError"
    assert "The tf.data input pipeline (data.pipeline='tfdata') needs TensorFlow" in message
    assert f"{INSTALL}, or set --config.data.pipeline=grain." in message
    kind, message = out["download"]
    assert kind == "ConfigError"
    assert (
        f"Preparing TFDS dataset 'tiny_photos' needs TensorFlow, which is not installed: "
        f"{INSTALL}." in message
    )
    assert not any(out[f"{name}_workdir"] for name in ("tfrecord", "tfdata", "download"))
    assert out["prepare"] == [
        1,
        f"error: Preparing TFDS dataset 'tiny_photos' needs TensorFlow, which is not installed: "
        f"{INSTALL}.\n",
    ]
    assert out["prepare_dir"] is False  # The data_dir it made is removed again.
    code, stderr = out["export"]
    assert code == 2 and stderr.count("\n") == 1
    assert "needs tensorflow" in stderr and "pip install 'resnet-jax[export]'" in stderr
    assert out["export_dir"] is False
