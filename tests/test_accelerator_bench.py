"""The accelerator benchmark command (benchmarks/accelerator.py) in its tiny CPU mode, so that it
cannot rot before its runs on GPUs and TPUs."""

import json
import subprocess
import sys

import pytest
from recipes import REPO

from benchmarks import accelerator


@pytest.fixture(scope="module")
def tiny_record(tmp_path_factory):
    out = tmp_path_factory.mktemp("accelerator")
    command = [sys.executable, "-m", "benchmarks.accelerator", "--tiny", f"--out={out}"]
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=900)
    (record,) = out.glob("accelerator-cpu-tiny-*.json")
    (table,) = out.glob("accelerator-cpu-tiny-*.md")
    return json.loads(record.read_text()), table.read_text()


def test_tiny_run_measures_both_parallelisms_on_two_devices(tiny_record):
    result, _ = tiny_record
    assert (result["device_count"], result["platform"], result["tiny"]) == (2, "cpu", True)
    rows = result["train"]
    assert [(r["parallelism"], r["per_device_batch"]) for r in rows] == [
        ("shard_map", 2),
        ("pmap", 2),
    ]
    for r in rows:
        assert r["images_per_sec"] > 0 and r["compile_seconds"] > 0
        assert r["flops_per_step"] > 0 and r["num_devices"] == 2
    assert result["versions"]["jax"] and result["versions"]["jaxlib"]


def test_tiny_run_feeds_the_step_from_the_input_pipeline(tiny_record):
    e2e = tiny_record[0]["end_to_end"]
    assert e2e["pipeline_images_per_sec"] > 0 and e2e["synthetic_images_per_sec"] > 0
    assert e2e["per_device_batch"] == 2 and e2e["input_bound"] in (True, False)


def test_tiny_run_checks_numerics_against_torchvision_and_skips_torch_compile_without_cuda(
    tiny_record,
):
    result, table = tiny_record
    numerics = result["numerics"]
    for precision in ("highest", "default"):
        row = numerics[precision]
        assert row["count"] == 2  # scikit-learn's two photographs
        assert row["rel_max_diff"] < 1e-5 and row["top5_equal"] == 2
    assert "no CUDA device" in result["torch_compile"]["skipped"]
    assert result["targets"] is None  # no targets outside H200 runs
    assert "tiny smoke run, not a measurement" in table


def test_h200_targets_are_judged_from_the_best_row_and_the_ratio():
    result = {
        "tiny": False,
        "device_kind": "NVIDIA H200",
        "best_train": {"images_per_sec": 8000.0},
        "torch_compile": {"jax_over_torch_compile": 1.1},
    }
    targets = accelerator._targets(result)
    assert targets["images_per_sec_met"] is True
    assert targets["vs_torch_compile_met"] is False
    assert accelerator._targets({**result, "device_kind": "TPU v5 lite"}) is None
