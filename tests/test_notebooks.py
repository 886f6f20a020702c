"""The Colab notebooks: committed clean, linked from the README, and run end to end headless.

Execution uses the notebooks' smoke mode (``RESNET_JAX_SMOKE=1``): no network (random weights,
scikit-learn's bundled digits, a tiny Imagenette archive written here), small sizes, the CPU.
Every code cell runs, as on Colab; only sizes and data sources differ. The notebooks' ``%pip
install`` cells run offline: they must find everything installed already (``pip install -e
'.[test]'``), and a failed install stops the notebook.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import re
import site
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from tests.mini_ilsvrc import _add, _jpeg

nbformat = pytest.importorskip("nbformat")

REPO = pathlib.Path(__file__).resolve().parents[1]
COLAB = REPO / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))
# How to open a notebook in Colab, with no repository URL to point a badge at.
OPEN_IN_COLAB = "*File → Upload notebook*, or *File → Open notebook → GitHub*"
CELL_TIMEOUT_S = 600


def _read(path: pathlib.Path):
    return nbformat.read(path, as_version=4)


def test_the_three_notebooks_exist():
    assert [p.name for p in NOTEBOOKS] == [
        "predict_and_finetune.ipynb",
        "train_resnet50_colab_tpu.ipynb",
        "verify_numerics.ipynb",
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = _read(path)
    nbformat.validate(nb)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: cells {dirty} have outputs or execution counts; clear them."


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_reads_smoke_mode_first_and_explains_its_cells(path):
    nb = _read(path)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert 'os.environ.get("RESNET_JAX_SMOKE")' in code[0].source
    intro = nb.cells[0]
    assert (
        intro.cell_type == "markdown"
        and f"{OPEN_IN_COLAB} with this repository, `colab/{path.name}`" in intro.source
    )
    markdown = sum(c.cell_type == "markdown" for c in nb.cells)
    assert markdown >= len(code) // 2, f"{path.name}: {markdown} text cells for {len(code)} code"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_readmes_link_notebook_and_say_how_to_open_it_in_colab(path):
    readme, ours = (REPO / "README.md").read_text(), (COLAB / "README.md").read_text()
    assert f"| [`colab/{path.name}`](colab/{path.name}) |" in readme
    assert f"| [`{path.name}`]({path.name}) |" in ours
    assert f"To open one in Colab: {OPEN_IN_COLAB}" in readme and OPEN_IN_COLAB in ours
    assert "colab.research.google.com/github/" not in readme + ours  # No made-up repository.


def _source(path: pathlib.Path) -> str:
    """A notebook's cells, markdown and code, as one text."""
    return "\n".join(cell.source for cell in _read(path).cells)


def test_tpu_notebook_names_the_remat_field_the_config_has():
    from resnet_jax.spec import default_config

    text = _source(COLAB / "train_resnet50_colab_tpu.ipynb")
    assert "remat" in default_config().model and "remat" not in default_config().model.kwargs
    assert "config.model.remat" in text and "config.model.kwargs.remat" not in text


def test_jupyter_lab_is_named_only_where_an_extra_installs_it():
    import tomllib

    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = extras["optional-dependencies"].values()
    if any(re.match(r"jupyterlab(?![\w-])", r) for reqs in extras for r in reqs):
        return
    texts = {p.name: _source(p) for p in NOTEBOOKS} | {
        "colab/README.md": (COLAB / "README.md").read_text()
    }
    says = sorted(name for name, text in texts.items() if re.search(r"jupyter[ -]lab\b", text))
    assert says == [], "they say `jupyter lab`, which no extra of pyproject.toml installs"


def test_readme_has_no_badge_pointing_at_a_repository():
    """A badge needs the project's real repository URL, which the README does not know."""
    readme = (REPO / "README.md").read_text()
    images = re.findall(r"!\[[^\]]*\]\(([^)\s]+)[^)]*\)(?:\]\(([^)\s]+)\))?", readme)
    images += [(src, "") for src in re.findall(r"<img[^>]*\ssrc=[\"']([^\"']+)", readme)]
    repository = re.compile(
        r"github\.com/|githubusercontent\.com/|gitlab\.com/|colab\.research\.google\.com/github/"
        r"|shields\.io/github/"
    )
    assert [urls for urls in images if any(repository.search(u) for u in urls)] == []


def test_no_notebook_or_recipe_downloads_full_size_imagenette():
    """The 320 px Imagenette (fast.ai's imagenette2-320.tgz, TFDS's imagenette/320px) is the one
    a Colab session fits; TFDS's bare `imagenette` is the 1.5 GB full-size build."""
    full_size = re.compile(r"(?<![\w/-])imagenette(?:/full-size)?(?![\w/-])|imagenette2(?![\w-])")
    sources = [*NOTEBOOKS, *sorted((REPO / "configs").glob("*.py"))]
    texts = {p.name: _source(p) if p.suffix == ".ipynb" else p.read_text() for p in sources}
    found = {name: full_size.findall(text) for name, text in texts.items()}
    assert {name: hits for name, hits in found.items() if hits} == {}


def _kernel_python(root: pathlib.Path) -> str:
    """An interpreter with resnet-jax installed: this one, or else ``_venv_over_this_python``."""
    try:
        importlib.metadata.distribution("resnet-jax")
        return sys.executable
    except importlib.metadata.PackageNotFoundError:
        return _venv_over_this_python(root / "venv")


def _venv_over_this_python(venv: pathlib.Path) -> str:
    """A throwaway virtual environment that sees this interpreter's packages, with this
    checkout installed in editable mode (so the notebooks' offline ``%pip install resnet-jax``
    finds it and nothing else changes). ``venv --system-site-packages`` would not do: run from a
    virtual environment, it sees the base interpreter's packages, not this environment's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    own = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = [
        *site.getsitepackages(),
        *([site.getusersitepackages()] if site.ENABLE_USER_SITE else []),
    ]
    # addsitedir (not a bare path) also runs those folders' own .pth files (editable installs).
    lines = [f"import site; site.addsitedir({d!r})\n" for d in ours if os.path.isdir(d)]
    (pathlib.Path(own) / "_parent_site_packages.pth").write_text("".join(lines))
    install = [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps"]
    install += ["--no-build-isolation", "-e", str(REPO)]
    done = subprocess.run(install, capture_output=True, text=True)
    if done.returncode:
        pytest.fail(f"Could not install this checkout for the notebook kernel:\n{done.stderr}")
    return python


@pytest.fixture(scope="module")
def kernel_dir(tmp_path_factory) -> pathlib.Path:
    """A 'python3' kernelspec in a temporary folder, so nothing has to be set up by hand."""
    pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    root = tmp_path_factory.mktemp("kernel")
    spec = root / "kernels" / "python3"
    spec.mkdir(parents=True)
    argv = [_kernel_python(root), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": "Python 3", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    return root / "kernels"


def _run(path: pathlib.Path, workdir: pathlib.Path, kernel_dir: pathlib.Path):
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager
    from nbclient import NotebookClient

    nb = _read(path)
    manager = KernelManager(
        kernel_name="python3", kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernel_dir)])
    )
    client = NotebookClient(
        nb,
        km=manager,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(workdir)}},
    )
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def _text(cell) -> str:
    """What the cell printed."""
    return "".join(o.text for o in cell.get("outputs", []) if o.output_type == "stream")


def _cell(nb, cell_id: str):
    return next(c for c in nb.cells if c.get("id") == cell_id)


def _has_png(cell) -> bool:
    return any("image/png" in out.get("data", {}) for out in cell.get("outputs", []))


# Three of Imagenette's classes: tench, English springer, cassette player.
SYNSETS = ("n01440764", "n02102040", "n02979186")
TRAIN_PER_CLASS, VAL_PER_CLASS = 24, 8


def _write_tiny_imagenette(path: pathlib.Path) -> list[str]:
    """A .tgz laid out as fast.ai's imagenette2-320.tgz, with small JPEGs whose mean colour
    tells the class; returns the files' paths in it."""
    rng = np.random.default_rng(0)
    names = []
    with tarfile.open(path, "w:gz") as tar:
        for synset in SYNSETS:
            color = rng.integers(40, 216, size=3)
            for split, count in (("train", TRAIN_PER_CLASS), ("val", VAL_PER_CLASS)):
                for i in range(count):
                    names.append(f"imagenette2-320/{split}/{synset}/{synset}_{i}.JPEG")
                    _add(tar, names[-1], _jpeg(rng, color, (40, 48)))
    return names


@pytest.fixture
def smoke_env(monkeypatch, tmp_path):
    """What CI gives the kernel: smoke mode, this checkout, no network, private caches, and a
    tiny Imagenette archive at a file:// URL."""
    monkeypatch.setenv("RESNET_JAX_SMOKE", "1")
    monkeypatch.setenv("RESNET_JAX_REPO", str(REPO))
    monkeypatch.setenv("RESNET_JAX_PACKAGE", "resnet-jax")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    for name in ("MPLBACKEND", "XLA_FLAGS", "KERAS_BACKEND"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    archive = tmp_path / "imagenette2-320.tgz"
    _write_tiny_imagenette(archive)
    monkeypatch.setenv("RESNET_JAX_IMAGENETTE_URL", archive.as_uri())
    sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setenv("RESNET_JAX_IMAGENETTE_SHA256", sha256)
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_fallback_kernel_environment_sees_this_interpreters_packages(tmp_path):
    python = _venv_over_this_python(tmp_path / "venv")
    probe = (
        "import json, sys, importlib.metadata as m, ipykernel, nbclient, resnet_jax; "
        "print(json.dumps([sys.prefix, sys.path, m.version('resnet-jax'), resnet_jax.__file__]))"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [python, "-c", probe], env=env, cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    prefix, path, version, module = json.loads(done.stdout)
    assert prefix == str(tmp_path / "venv") and version == importlib.metadata.version("resnet-jax")
    assert [d for d in site.getsitepackages() if os.path.isdir(d) and d not in path] == []
    assert module == str(REPO / "resnet_jax" / "__init__.py")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_cell_raises_when_pip_fails(path):
    source = _cell(_read(path), "install").source
    pip = source.index("%pip install -q {pip_args}\n")
    guard = 'if globals().get("_exit_code"):\n    raise RuntimeError('
    assert source.index(guard) > pip, "the install cell must stop the notebook when %pip fails"


def test_a_failed_pip_install_stops_the_notebook(smoke_env, kernel_dir, monkeypatch):
    from nbclient.exceptions import CellExecutionError

    monkeypatch.setenv("RESNET_JAX_PACKAGE", "resnet-jax-on-no-index")
    nb = _read(COLAB / "train_resnet50_colab_tpu.ipynb")
    nb.cells = [_cell(nb, "settings"), _cell(nb, "install")]
    path = smoke_env / "install_only.ipynb"
    nbformat.write(nb, path)
    with pytest.raises(CellExecutionError) as error:
        _run(path, smoke_env, kernel_dir)
    assert error.value.ename == "RuntimeError"
    assert error.value.evalue.startswith("pip install --no-index resnet-jax-on-no-index ")
    assert error.value.evalue.endswith(" failed (exit status 1).")


def test_the_data_cell_checks_the_archive_and_extracts_it_once(smoke_env, kernel_dir):
    """Smoke mode without an archive stops at once (it would download Imagenette); a download
    with another SHA-256 stops the notebook and leaves nothing behind; the next run extracts
    every file; after that the cell neither downloads nor extracts again."""
    url = os.environ["RESNET_JAX_IMAGENETTE_URL"]
    sha256 = os.environ["RESNET_JAX_IMAGENETTE_SHA256"]
    train_nb = _read(COLAB / "train_resnet50_colab_tpu.ipynb")
    settings, data = _cell(train_nb, "settings").source, _cell(train_nb, "data").source
    new, raises = nbformat.v4.new_code_cell, {"tags": ["raises-exception"]}
    nb = nbformat.v4.new_notebook(
        cells=[
            new('import os; url = os.environ.pop("RESNET_JAX_IMAGENETTE_URL")', id="no-archive"),
            new(settings, id="smoke-offline", metadata=raises),
            new('os.environ["RESNET_JAX_IMAGENETTE_URL"] = url', id="archive"),
            new(settings, id="settings"),
            new('IMAGENETTE_SHA256 = "0" * 64', id="wrong-sha"),
            new(data, id="wrong", metadata=raises),
            new("print(sorted(os.listdir(DATA_DIR)))", id="left"),
            new(f"IMAGENETTE_SHA256 = {sha256!r}", id="right-sha"),
            new(data, id="first"),
            new('IMAGENETTE_URL = "file:///nowhere/imagenette2-320.tgz"', id="no-url"),
            new(data, id="again"),
        ]
    )
    path = smoke_env / "data_only.ipynb"
    nbformat.write(nb, path)
    nb, _ = _run(path, smoke_env, kernel_dir)
    error = next(o for o in _cell(nb, "smoke-offline").outputs if o.output_type == "error")
    assert (error.ename, error.evalue) == (
        "RuntimeError",
        "Smoke mode is offline: set RESNET_JAX_IMAGENETTE_URL (and _SHA256) to a small archive "
        "laid out as Imagenette's; tests/test_notebooks.py writes one.",
    )
    error = next(o for o in _cell(nb, "wrong").outputs if o.output_type == "error")
    assert (error.ename, error.evalue) == (
        "RuntimeError",
        f"{url} arrived with SHA-256 {sha256}, not {'0' * 64}: the download is broken or the "
        "file has changed. Run this cell again to download it anew.",
    )
    assert _text(_cell(nb, "left")) == "[]\n"  # No partial archive, no half-extracted folder.
    counts = f"{3 * TRAIN_PER_CLASS} training and {3 * VAL_PER_CLASS} validation images of 3 "
    counts += f"classes: {', '.join(SYNSETS)}\n"
    assert _text(_cell(nb, "first")) == f"Downloading {url} ...\n{counts}"
    folder = smoke_env / "data" / "imagenette2-320"
    assert _text(_cell(nb, "again")) == f"Already extracted: {folder}\n{counts}"
    with tarfile.open(pathlib.Path(url.removeprefix("file://"))) as tar:
        archived = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    extracted = {
        str(f.relative_to(smoke_env / "data")): f.read_bytes()
        for f in folder.rglob("*")
        if f.is_file()
    }
    assert extracted == archived and os.listdir(smoke_env / "data") == ["imagenette2-320"]


# Appended to the training notebook: the eval step on each shown image alone (a one-hot mask),
# against what the predict cell showed, and the shown pixels against the batch's uint8 pixels.
EVAL_CHECK = """
import json, types
from resnet_jax.data import presets
from resnet_jax.training.steps import eval_step

preset = presets.data_preset(config.data)
state = types.SimpleNamespace(variables=variables, ema=None)  # raw weights only
step = jax.jit(jax.vmap(
    lambda b: eval_step(state, b, model=model, axis_name="d", preset=preset),
    axis_name="d",
))
n, labels = len(probs), np.asarray(batch["label"])
evals = [
    step({"image": batch["image"][None], "label": labels[None], "mask": (np.arange(n) == i)[None]})
    for i in range(n)
]
with np.errstate(divide="ignore"):  # A wrong cell can give a true class probability 0.
    shown_loss = -np.log(probs[np.arange(n), labels].astype(np.float64))
print(json.dumps({
    "dtype": str(batch["image"].dtype),
    "hits_agree": int(sum(float(e["top1"][0]) == float(probs[i].argmax() == labels[i])
                          for i, e in enumerate(evals))),
    "eval_right": int(sum(float(e["top1"][0]) for e in evals)),
    "loss_diff": float(np.max(np.abs([float(e["loss"][0]) for e in evals] - shown_loss))),
    "pixels": [float(pixels.min()), float(pixels.max())],
    "pixels_diff": float(np.max(np.abs(pixels * 255.0 - batch["image"]))),
    "tensorflow": tensorflow_importable,
}))
"""
# Prepended to it: whether the kernel could import TensorFlow after the whole run.
TF_CHECK = """
try:
    import tensorflow
    tensorflow_importable = True
except ImportError:
    tensorflow_importable = False
"""


@pytest.fixture
def without_tensorflow(monkeypatch, tmp_path):
    """The kernel (and the processes it starts) cannot import TensorFlow, as on Colab's TPU."""
    blocker = tmp_path / "no_tensorflow"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\nsys.modules['tensorflow'] = None  # import tensorflow raises ImportError\n"
    )
    path = [str(blocker), *filter(None, [os.environ.get("PYTHONPATH")])]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(path))


def test_train_notebook_runs_in_smoke_mode(smoke_env, kernel_dir, without_tensorflow):
    nb = _read(COLAB / "train_resnet50_colab_tpu.ipynb")
    assert "tensorflow" not in _cell(nb, "install").source.lower()  # Installs the package alone.
    nb.cells.append(nbformat.v4.new_code_cell(TF_CHECK + EVAL_CHECK, id="eval-check"))
    path = smoke_env / "train_resnet50_colab_tpu.ipynb"
    nbformat.write(nb, path)
    nb, seconds = _run(path, smoke_env, kernel_dir)
    print(f"train_resnet50_colab_tpu.ipynb: {seconds:.0f} s", file=sys.stderr)
    assert "Run for this runtime (smoke)" in _text(_cell(nb, "devices"))
    # The archive went through the same download, checksum and extraction as on Colab.
    data = _text(_cell(nb, "data")).splitlines()
    assert data[0] == f"Downloading {os.environ['RESNET_JAX_IMAGENETTE_URL']} ..."
    n_train, n_val, classes = 3 * TRAIN_PER_CLASS, 3 * VAL_PER_CLASS, ", ".join(SYNSETS)
    assert data[1] == f"{n_train} training and {n_val} validation images of 3 classes: {classes}"
    top1 = re.search(r"validation top-1 ([0-9.]+)", _text(_cell(nb, "train")))
    assert top1 and 0.0 <= float(top1.group(1)) <= 1.0
    assert re.search(r"median [0-9,]+ images/s", _text(_cell(nb, "throughput")))
    workdir = smoke_env / "workdir" / "resnet50_imagenette_32px"
    assert (workdir / "curves.png").stat().st_size > 0
    assert (workdir / "metrics.jsonl").exists() and (workdir / "checkpoints").is_dir()
    assert _has_png(_cell(nb, "curves")) and _has_png(_cell(nb, "predict"))
    right = re.search(r"(\d+) of 16 right", _text(_cell(nb, "predict")))
    check = json.loads(_text(_cell(nb, "eval-check")))
    # The recipe ships uint8 pixels; the shown predictions are the eval step's, image by image.
    assert check["dtype"] == "uint8" and check["hits_agree"] == 16, check
    assert check["loss_diff"] < 1e-4, check  # The same losses, not just the same hits.
    assert right and int(right.group(1)) == check["eval_right"], check
    # The shown pixels are the batch's own, in [0, 1], not normalised values clipped to white.
    assert 0.0 <= check["pixels"][0] and check["pixels"][1] <= 1.0, check
    assert check["pixels_diff"] < 1e-3, check
    assert check["tensorflow"] is False, check  # The whole run went without TensorFlow.


def test_verify_notebook_runs_in_smoke_mode(smoke_env, kernel_dir):
    nb, seconds = _run(COLAB / "verify_numerics.ipynb", smoke_env, kernel_dir)
    print(f"verify_numerics.ipynb: {seconds:.0f} s", file=sys.stderr)
    for cell_id in ("tv-compare", "keras-compare"):
        table = _text(_cell(nb, cell_id))
        assert "layer4" in table and table.rstrip().endswith("\nPASS"), table
    assert _has_png(_cell(nb, "tv-plot")) and _has_png(_cell(nb, "keras-compare"))
    for cell_id in ("tv-top5", "keras-top5"):
        out = _text(_cell(nb, cell_id))
        assert re.search(r"^5\. ", out, re.M), out  # five ranks, both frameworks side by side
        assert float(re.search(r"logits max\|diff\| = (\S+)", out).group(1)) < 1e-4
    summary = _text(_cell(nb, "summary"))
    assert summary.count("PASS") == 2, summary
    saved = _text(_cell(nb, "save"))  # resnet_jax.load reads the card written with the weights
    found = re.search(
        r"preset torchvision_v\d, 1000 classes, logits within (\S+) of torchvision", saved
    )
    assert found and float(found.group(1)) < 1e-4, saved


def test_finetune_notebook_runs_in_smoke_mode(smoke_env, kernel_dir):
    nb, seconds = _run(COLAB / "predict_and_finetune.ipynb", smoke_env, kernel_dir)
    print(f"predict_and_finetune.ipynb: {seconds:.0f} s", file=sys.stderr)
    assert "china.jpg" in _text(_cell(nb, "label")) and _has_png(_cell(nb, "label"))
    assert "100 training and 100 validation images of 10 classes" in _text(_cell(nb, "data"))
    loop = re.search(r"fine-tuned: validation top-1 ([0-9.]+)", _text(_cell(nb, "train")))
    assert loop, _text(_cell(nb, "train"))
    workdir = smoke_env / "workdir" / "resnet18_digits"
    assert (workdir / "checkpoints").is_dir() and (workdir / "curves.png").exists()
    out = _text(_cell(nb, "finetuned"))
    hits = re.search(r"(\d+) of 100 validation images right", out)
    assert hits, out
    # The predictor reading the workdir agrees with the loop's own evaluation.
    assert int(hits.group(1)) / 100 == pytest.approx(float(loop.group(1)), abs=0.05)
    assert _has_png(_cell(nb, "finetuned"))
