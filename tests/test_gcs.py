"""A gs:// workdir works wherever a local one does, against a real GCS API server on localhost
(the ``gcs`` fixture): the run's files, a SIGKILLed run resumed bitwise, two processes sharing
one workdir, predict from a gs:// checkpoint; a missing bucket or credentials is one line."""

import json
import os
import pathlib
import signal
import subprocess
import sys

import numpy as np
import pytest
from etils import epath
from PIL import Image

from resnet_jax import storage
from resnet_jax.training.metrics import MetricWriter, drop_rows_after, read_metrics
from resnet_jax.training.plot import plot_curves
from resnet_jax.training.validate import ConfigError, check_workdir

REPO = pathlib.Path(__file__).resolve().parents[1]
DRIVER = REPO / "tests" / "drivers" / "crash_resume_train.py"
TOTAL = 12
# The quickstart (real digits data), cut to TOTAL steps with a checkpoint every 4.
QUICKSTART = [
    f"--config.num_train_steps={TOTAL}",
    "--config.checkpoint_every_steps=4",
    "--config.log_every_steps=2",
    "--config.eval_batch_size=360",
    "--config.optimizer.warmup_epochs=0.1",
    "--config.progress_bar=False",
]


def test_files_metrics_and_plots_round_trip_through_the_bucket(gcs):
    path = storage.path(f"{gcs}/files/a/b.txt")
    assert str(path) == "gs://bucket/files/a/b.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("hello")
    assert path.read_text() == "hello" and epath.Path(f"{gcs}/files/a").is_dir()

    workdir = f"{gcs}/files/run"
    writer = MetricWriter(workdir, tensorboard=True)
    for step in (2, 4, 6):
        writer.write("train", step, {"loss": 1.0 / step, "top1": 0.1 * step})
    writer.close()
    assert [r["step"] for r in read_metrics(workdir)] == [2, 4, 6]  # Rows, though no appends.
    assert drop_rows_after(workdir, 4) == 1  # A resume from step 4 drops step 6.
    text = epath.Path(workdir, "metrics.jsonl").read_text()
    assert [json.loads(line)["step"] for line in text.splitlines()] == [2, 4]
    assert not epath.Path(workdir, "metrics.jsonl.tmp").exists()
    writer = MetricWriter(workdir, tensorboard=False, resume_step=4)
    writer.write("train", 4, {"loss": 9.0, "top1": 0.9})  # Recorded already: not written again.
    writer.write("train", 6, {"loss": 0.2, "top1": 0.6})
    writer.close()
    assert [(r["step"], r["loss"]) for r in read_metrics(workdir)] == [
        (2, 0.5),
        (4, 0.25),
        (6, 0.2),
    ]
    events = list(epath.Path(workdir, "tensorboard").iterdir())
    assert len(events) == 1 and events[0].name.startswith("events.out.tfevents.")
    assert events[0].stat().length > 0

    png = plot_curves(workdir)
    assert str(png) == f"{workdir}/curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_missing_bucket_or_missing_credentials_is_one_clear_message(gcs, monkeypatch, tmp_path):
    with pytest.raises(ConfigError) as e:
        check_workdir("gs://no-such-bucket/run")
    assert str(e.value) == (
        "--workdir=gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist (or these "
        "credentials cannot see it). Create it (`gcloud storage buckets create "
        "gs://no-such-bucket`) or fix the path."
    )
    check_workdir(f"{gcs}/run")  # The bucket exists: no error.

    monkeypatch.delenv("STORAGE_EMULATOR_HOST")  # Real GCS, and no credentials anywhere.
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # No gcloud login.
    monkeypatch.setenv("GCE_METADATA_HOST", "127.0.0.1:9")  # Not on a GCE VM.
    monkeypatch.setenv("GCE_METADATA_IP", "127.0.0.1:9")
    problem = storage.remote_problem("gs://bucket/run", "--workdir")
    assert problem == (
        "--workdir=gs://bucket/run needs Google Cloud credentials, and none were found. On a "
        "Cloud TPU or GCE VM the VM's service account is used; elsewhere run `gcloud auth "
        "application-default login` or set GOOGLE_APPLICATION_CREDENTIALS to a service-account "
        "key file."
    )
    assert storage.remote_problem("/tmp/run", "--workdir") is None


def test_an_object_in_the_way_of_a_gs_workdir_is_one_clear_message(gcs):
    blocked = epath.Path(gcs, "blocked", "notes.txt")
    blocked.write_text("mine")
    fix = "pass --workdir=DIR naming a directory you can write to (new, or an earlier run's)."
    under = f"is under {blocked}, a file"
    for workdir, where in [(blocked, "is a file"), (blocked / "run", under)]:
        with pytest.raises(ConfigError) as e:
            check_workdir(str(workdir))
        assert str(e.value) == f"workdir {workdir} {where}, not a directory: {fix}"
    assert list(blocked.parent.iterdir()) == [blocked] and blocked.read_text() == "mine"


def train(workdir: str, tmp: pathlib.Path, *flags: str) -> subprocess.Popen:
    """The quickstart through train.py (reporting saves and restores), output to a pipe."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": "2",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",
        "JAX_COMPILATION_CACHE_DIR": str(tmp / "jax_cache"),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "COMMIT_DELAY_S": "0",
    }
    config = REPO / "configs" / "quickstart.py"
    return subprocess.Popen(
        [sys.executable, str(DRIVER), str(config), workdir, *QUICKSTART, *flags],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[int, list[str]]:
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out.splitlines()


def reports(lines: list[str], kind: str) -> list[tuple[int, str]]:
    return [(int(w[1]), w[2]) for w in (x.split() for x in lines) if w[:1] == [kind]]


def final_arrays(workdir: str) -> list[np.ndarray]:
    import jax
    import orbax.checkpoint as ocp

    manager = ocp.CheckpointManager(epath.Path(workdir, "checkpoints"), item_names=("state",))
    restored = manager.restore(TOTAL, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    manager.close()
    return [np.asarray(x) for x in jax.tree.leaves(restored["state"])]


@pytest.fixture(scope="module")
def straight(gcs, tmp_path_factory):
    """An uninterrupted quickstart run in gs://bucket/straight: (its workdir, its saves)."""
    tmp = tmp_path_factory.getbasetemp()
    code, lines = finish(train(f"{gcs}/straight", tmp))
    assert code == 0, "\n".join(lines[-40:])
    return f"{gcs}/straight", dict(reports(lines, "SAVE"))


@pytest.mark.slow  # Three train.py runs: about two minutes.
def test_quickstart_on_gs_killed_and_rerun_ends_bitwise_as_uninterrupted(gcs, straight, tmp_path):
    workdir, uninterrupted = straight
    files = {p.name for p in epath.Path(workdir).iterdir()}
    assert {"config.json", "metrics.jsonl", "tensorboard", "checkpoints", "curves.png"} <= files
    assert {"confusion_matrix.json", "confusion_matrix.png"} <= files
    steps = sorted(int(p.name) for p in epath.Path(workdir, "checkpoints").iterdir())
    assert steps[-1] == TOTAL

    killed = f"{gcs}/run"
    proc = train(killed, tmp_path.parent)
    seen = []
    for line in proc.stdout:  # Save k waits for save k-1: after two, one is complete.
        seen.append(line)
        if len(reports(seen, "SAVE")) == 2:
            break
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert reports(seen, "SAVE")[-1][0] < TOTAL, "".join(seen[-20:])

    code, lines = finish(train(killed, tmp_path.parent))
    assert code == 0, "\n".join(lines[-40:])
    (restored,) = reports(lines, "RESTORE")
    assert restored == (restored[0], uninterrupted[restored[0]])  # The bits saved before the kill.
    assert reports(lines, "SAVE")[-1] == (TOTAL, uninterrupted[TOTAL])
    rows = read_metrics(killed)
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(2, TOTAL + 1, 2))
    for a, b in zip(final_arrays(workdir), final_arrays(killed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_predict_reads_a_gs_workdir_and_writes_gs_outputs(gcs, straight, tmp_path):
    from resnet_jax import predict

    workdir, _ = straight
    image = tmp_path / "digit.png"
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(image)
    out = f"{gcs}/predictions/out.json"
    assert predict.main(["--checkpoint", workdir, str(image), "--output", out, "--top-k", "3"]) == 0
    (row,) = json.loads(epath.Path(out).read_text())
    assert len(row["indices"]) == 3 and row["path"] == str(image)


def test_train_py_names_a_missing_bucket_in_one_line(gcs, tmp_path):
    code, lines = finish(train("gs://no-such-bucket/run", tmp_path))
    assert code == 1
    assert lines[-1] == (
        "train.py: --workdir=gs://no-such-bucket/run: bucket gs://no-such-bucket does not exist "
        "(or these credentials cannot see it). Create it (`gcloud storage buckets create "
        "gs://no-such-bucket`) or fix the path."
    )
    assert not [line for line in lines if "Traceback" in line]


def test_train_py_reads_its_config_file_from_the_bucket(gcs, tmp_path):
    """ml_collections loads local files only: a gs:// --config is copied to a local folder for it
    (and removed); a missing one is one line."""
    recipe = epath.Path(f"{gcs}/recipes/quickstart.py")
    recipe.write_text((REPO / "configs" / "quickstart.py").read_text())
    runs = {  # Read and loaded: the run starts and refuses the batch; a misspelt field's hint.
        f"--config={recipe} --config.batch_size=0": "train.py: Invalid config:",
        f"--config {recipe} --config.batch_sise=8": (
            "train.py: --config.batch_sise: the config has no field 'batch_sise'; did you mean "
            "--config.batch_size?"
        ),
        f"--config={gcs}/recipes/nope.py": f"train.py: config file {gcs}/recipes/nope.py does not "
        "exist.",
    }
    for args, first_line in runs.items():
        cmd = [sys.executable, "train.py", *args.split(), f"--workdir={tmp_path / 'work'}"]
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
        assert proc.returncode == 1 and proc.stderr.startswith(first_line), proc.stderr
        assert "Traceback" not in proc.stderr
        assert sorted(p.name for p in tmp_path.iterdir()) == []  # No copy or workdir left.


def test_two_processes_train_into_one_gs_workdir(gcs, tmp_path):
    from test_multihost import TOTAL as STEPS
    from test_multihost import launch, output, records

    workdir = f"{gcs}/multihost"
    procs = launch(tmp_path, workdir, "gs")
    try:
        codes = [p.wait(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert codes == [0, 0], output(tmp_path, "gs", 0) + output(tmp_path, "gs", 1)
    steps = [dict(records(tmp_path, "gs", i, "STEP")) for i in range(2)]
    assert steps[0] == steps[1] and sorted(map(int, steps[0])) == list(range(1, STEPS + 1))
    saved = sorted(int(p.name) for p in epath.Path(workdir, "checkpoints").iterdir())
    assert saved[-1] == STEPS
    rows = read_metrics(workdir)
    assert [r["step"] for r in rows if r["split"] == "train"] == list(range(2, STEPS + 1, 2))


def test_epath_picks_gcsfs_not_tensorflow_for_gs(gcs):
    from etils.epath import backend

    assert os.environ["EPATH_USE_TF"] == "false"
    assert epath.Path(f"{gcs}/x")._backend is backend.fsspec_backend


def test_a_folder_in_the_bucket_trains_and_predict_reads_its_images(gcs, tmp_path):
    """data.folder on gs:// (listed, checked and read through gcsfs) trains 2 steps with Grain
    and evaluates its hold-out; predict reads a gs:// folder of images."""
    from recipes import tiny_synthetic_config

    from resnet_jax import predict
    from resnet_jax.data import folder, write_digits_folder
    from resnet_jax.training import train_and_evaluate

    local = write_digits_folder(tmp_path / "digits", per_class=2, image_size=8)
    for f in sorted(local.rglob("*.png")):
        epath.Path(gcs, "digits", f.relative_to(local)).write_bytes(f.read_bytes())
    epath.Path(gcs, "digits", "3", "empty.png").write_bytes(b"")
    config = tiny_synthetic_config(num_train_steps=2, batch_size=8, eval_every_steps=2)
    config.eval_batch_size = 8
    config.data.update({"dataset": "folder", "folder": f"{gcs}/digits", "eval_fraction": 0.5})
    workdir = tmp_path / "work"
    result = train_and_evaluate(config, str(workdir))
    assert result["step"] == 2 and result["eval"]["count"] == 10  # One image per class held out.
    (kept,) = [json.loads(p.read_text()) for p in workdir.glob(f"{folder.INDEX_FILE_PREFIX}*")]
    assert len(kept["files"]) == 20 and all(f.startswith(f"{gcs}/digits/") for f in kept["files"])
    assert kept["skipped"] == {f"{gcs}/digits/3/empty.png": "empty file"}

    out = tmp_path / "predictions.json"
    assert (
        predict.main(["--checkpoint", str(workdir), f"{gcs}/digits/7", "--output", str(out)]) == 0
    )
    rows = json.loads(out.read_text())
    assert [r["path"] for r in rows] == [
        str(p) for p in sorted(epath.Path(gcs, "digits", "7").iterdir())
    ]
    assert len(rows) == 2


def test_a_tfds_array_record_build_in_the_bucket_is_read_through_data_source(gcs, tmp_path):
    """data.data_dir on gs://: TFDS reads the build's metadata, array_record's own GCS client
    (google-cloud-cpp, no TensorFlow file system) its records."""
    pytest.importorskip("tensorflow_datasets")
    from resnet_jax.data import grain_pipeline, pipeline
    from tests.tfds_tiny import TinyPhotos

    TinyPhotos(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    for f in sorted(p for p in tmp_path.rglob("*") if p.is_file()):
        epath.Path(gcs, "tfds", f.relative_to(tmp_path)).write_bytes(f.read_bytes())
    config = pipeline.default_data_config()
    config.update(
        {"dataset": "tiny_photos", "data_dir": f"{gcs}/tfds", "image_size": 8, "workers": 0}
    )
    assert grain_pipeline.uses_grain(config)
    source = grain_pipeline.make_source(config, train=True)
    assert len(source) == 12 and source[5][0][:3] == b"\xff\xd8\xff"  # JPEG bytes, as stored.
    one = {"process_index": 0, "process_count": 1}
    batch = next(grain_pipeline.create_train_iterator(config, global_batch_size=4, seed=0, **one))
    assert batch["image"].shape == (4, 8, 8, 3)
    evaluated = list(grain_pipeline.create_eval_iterator(config, global_batch_size=3, **one))
    assert sum(b["mask"].sum() for b in evaluated) == 4


@pytest.fixture(scope="module")
def r20():
    from resnet_jax.data.presets import Preset
    from resnet_jax.inference import random_predictor

    return random_predictor("resnet20", Preset("tiny", resize=40, crop=32), num_classes=3)


def bucket_changes(monkeypatch, fail_at: int | None = None) -> list[tuple[str, str]]:
    """The gs:// writes and deletions from now on, in order, as (method, file name); write number
    ``fail_at`` (from 0) raises OSError instead."""
    from etils.epath.gpath import _GPath

    log = []

    def spy(method, real):
        def call(self, *args, **kwargs):
            if str(self).startswith("gs://"):
                writes = sum(m == "write_bytes" for m, _ in log)
                log.append((method, self.name))
                if method == "write_bytes" and writes == fail_at:
                    raise OSError("connection reset")
            return real(self, *args, **kwargs)

        return call

    for method in ("write_bytes", "unlink", "rmtree"):
        monkeypatch.setattr(_GPath, method, spy(method, getattr(_GPath, method)))
    return log


def test_export_writes_a_gs_folder_checked_in_a_local_one_that_is_removed(
    gcs, r20, tmp_path, monkeypatch
):
    from resnet_jax.export import export_predictor

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    out = export_predictor(r20, f"{gcs}/exported/r20", ["stablehlo"])
    assert str(out) == f"{gcs}/exported/r20"
    assert sorted(f.name for f in out.iterdir()) == ["export.json", "model.stablehlo"]
    meta = json.loads((out / "export.json").read_text())
    assert meta["files"] == {"stablehlo": "model.stablehlo"} and meta["num_classes"] == 3
    assert meta["checks"]["stablehlo"]["max_relative_difference"] <= 1e-5
    assert os.listdir(tmp_path) == []


def test_a_failed_gs_export_deletes_what_it_uploaded_and_a_retry_works(
    gcs, r20, tmp_path, monkeypatch
):
    from resnet_jax.export import ExportError, export_predictor

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    out = f"{gcs}/exported/failed"
    with monkeypatch.context() as m:
        changes = bucket_changes(m, fail_at=1)  # model.stablehlo is uploaded, export.json fails.
        with pytest.raises(ExportError) as e:
            export_predictor(r20, out, ["stablehlo"])
    assert str(e.value) == (
        f"Uploading the export to {out} failed (connection reset); what it uploaded is deleted: "
        "run the export again."
    )
    assert changes == [
        ("write_bytes", "model.stablehlo"),
        ("write_bytes", "export.json"),
        ("unlink", "model.stablehlo"),
        ("unlink", "export.json"),
    ]
    assert not epath.Path(out).exists() and os.listdir(tmp_path) == []
    export_predictor(r20, out, ["stablehlo"])  # No --overwrite needed.
    assert sorted(f.name for f in epath.Path(out).iterdir()) == ["export.json", "model.stablehlo"]


def previous_export(folder: str) -> dict[str, bytes]:
    """A previous export's objects (stablehlo and onnx) in ``folder``, as {name: bytes}."""
    files = {"export.json": b'{"files": "old"}', "model.onnx": b"old", "model.stablehlo": b"old"}
    for name, data in files.items():
        epath.Path(folder, name).write_bytes(data)
    return files


def test_a_failed_gs_overwrite_keeps_the_old_files_and_leaves_no_export_json(gcs, r20, monkeypatch):
    from resnet_jax.export import ExportError, export_predictor

    out = f"{gcs}/exported/half"
    old = previous_export(out)
    changes = bucket_changes(monkeypatch, fail_at=0)
    with pytest.raises(ExportError) as e:
        export_predictor(r20, out, ["stablehlo"], overwrite=True)
    assert str(e.value) == (
        f"Uploading the export to {out} failed (connection reset); the folder is incomplete (it "
        "has no export.json): run the export again with --overwrite."
    )
    assert changes == [("unlink", "export.json"), ("write_bytes", "model.stablehlo")]
    left = {f.name: f.read_bytes() for f in epath.Path(out).iterdir()}
    assert left == {n: b for n, b in old.items() if n != "export.json"}


def test_a_gs_overwrite_deletes_old_files_after_the_upload_and_writes_export_json_last(
    gcs, r20, monkeypatch
):
    from resnet_jax.export import export_predictor

    out = f"{gcs}/exported/replaced"
    previous_export(out)
    changes = bucket_changes(monkeypatch)
    export_predictor(r20, out, ["stablehlo"], overwrite=True)
    assert changes == [
        ("unlink", "export.json"),
        ("write_bytes", "model.stablehlo"),
        ("unlink", "model.onnx"),
        ("write_bytes", "export.json"),
    ]
    assert sorted(f.name for f in epath.Path(out).iterdir()) == ["export.json", "model.stablehlo"]
    meta = json.loads(epath.Path(out, "export.json").read_text())
    assert meta["files"] == {"stablehlo": "model.stablehlo"}
    assert epath.Path(out, "model.stablehlo").read_bytes() != b"old"
