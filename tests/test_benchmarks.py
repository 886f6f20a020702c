"""The benchmark harness: a tiny end-to-end run writes valid JSON and markdown, and its parts
(peak table, MFU, cost and memory analyses, HLO counting, the report) do what they say."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import common, report, run
from benchmarks.jax_bench import compiled_flops, compiled_memory, count_all_reduces
from resnet_jax.backend import FORWARD_OPTIONS

# --tiny sets every size and count; only the frameworks and ablations are chosen here.
SMOKE_ARGS = [
    "--suite",
    "cpu",
    "--tiny",
    "--frameworks",
    "jax,jax_cpu_fast,torch",
    "--fast-variants",
    "baseline,host_sync,prefetch,prefetch_uint8,cpu_fast",
    "--scaling-devices",
    "2",
]


@pytest.fixture
def quick_compiles(monkeypatch):
    """The smoke run checks plumbing, not speed: skip XLA optimisations (here and in children)."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")
    yield
    jax.config.update("jax_disable_most_optimizations", before)


def test_tiny_run_writes_json_and_markdown(tmp_path, quick_compiles):
    json_path, md_path = run.main([*SMOKE_ARGS, "--out", str(tmp_path)])
    with open(json_path) as f:
        results = json.load(f)
    assert results["suite"] == "cpu"
    assert results["hardware"]["platform"] == "cpu" and results["hardware"]["cpu_cores"] >= 1
    assert "node" not in json.dumps(results["hardware"]).lower()
    assert results["versions"]["jax"] == jax.__version__
    assert len(results["load_average_start"]) == 3
    settings = results["settings"]
    assert (settings["model"], settings["num_classes"], settings["image_size"]) == (
        "resnet18",
        10,
        32,
    )
    assert (settings["batch_size"], settings["steps"], settings["windows"]) == (2, 1, 2)
    assert settings["precisions"] == ["bf16"] and settings["tiny"] is True

    for task in ("train", "inference"):
        rows = results["compare"][task]["bf16"]
        assert set(rows) == {"jax", "jax_cpu_fast", "torch"}
        assert all(
            r["images_per_sec"] > 0 and len(r["window_images_per_sec"]) == 2 for r in rows.values()
        )
        assert rows["jax"]["flops_per_image"] > 0
        # Every framework ran the same network, so ratios and the copied FLOPs are fair.
        assert {r["arch"] for r in rows.values()} == {"resnet-jax resnet18", "torchvision resnet18"}
        assert rows["torch"]["flops_per_image"] == rows["jax"]["flops_per_image"]
        assert rows["torch"]["flops_source"].startswith("resnet-jax resnet18 ")
        assert rows["jax"]["mfu"] is None  # CPU: no peak FLOP/s known.
        assert results["ratios"][task]["bf16"]["jax/torch"] > 0
        fast = rows["jax_cpu_fast"]
        assert results["ratios"][task]["bf16"]["jax_cpu_fast/jax"] == pytest.approx(
            fast["images_per_sec"] / rows["jax"]["images_per_sec"]
        )
        # resnet18's three 1x1 projections are matrix products with the cpu_fast backend only.
        assert (rows["jax"]["backend"], fast["backend"]) == ("xla", "cpu_fast")
        if task == "inference":
            assert (rows["jax"]["convolution_ops"], fast["convolution_ops"]) == (20, 17)
        else:
            assert fast["convolution_ops"] < rows["jax"]["convolution_ops"]
    inference, train_rows = results["compare"]["inference"]["bf16"], results["compare"]["train"]
    assert inference["jax"]["xla_compiler_options"] is None
    assert inference["jax_cpu_fast"]["xla_compiler_options"] == FORWARD_OPTIONS
    assert train_rows["bf16"]["jax_cpu_fast"]["xla_compiler_options"] is None
    train = results["compare"]["train"]["bf16"]["jax"]
    assert train["compile_seconds"] > 0 and train["compiled_memory"]["total_bytes"] > 0
    assert train["donate"] is True and train["all_reduce_ops"] >= 1

    fast = results["fast"]["variants"]
    assert list(fast) == ["baseline", "host_sync", "prefetch", "prefetch_uint8", "cpu_fast"]
    assert (fast["baseline"]["backend"], fast["cpu_fast"]["backend"]) == ("xla", "cpu_fast")
    assert fast["prefetch"]["feed"] == "prefetch" and fast["host_sync"]["host_sync"] is True
    assert fast["prefetch_uint8"]["feed"] == "prefetch"

    inp = results["input_pipeline"]
    assert inp["images_per_sec"] > 0
    assert inp["images_per_sec_per_core"] == pytest.approx(
        inp["images_per_sec"] / inp["cores_used"]
    )
    (row,) = results["scaling"]["rows"]
    assert row["devices"] == 2 and row["global_batch"] == 2 and row["images_per_sec"] > 0
    assert "not a speedup" in results["scaling"]["note"]
    assert results["targets"] == []  # A smoke run measures nothing worth a verdict.

    md = open(md_path).read()
    for heading in (
        "## Side by side",
        "## Details",
        "## Make it fast",
        "## Input pipeline",
        "## Scaling",
    ):
        assert heading in md
    assert "## Targets" not in md and "resnet18 at 32x32, batch 2" in md
    assert "| train | bf16 |" in md


def test_tiny_sets_a_small_run_of_one_network_and_full_runs_keep_their_defaults():
    tiny = run.parse_args(["--suite", "cpu", "--tiny"])
    assert (tiny.model, tiny.image_size, tiny.batch_size, tiny.steps, tiny.windows) == (
        "resnet18",
        32,
        2,
        1,
        2,
    )
    assert (tiny.frameworks, tiny.precisions, tiny.fast_batch_size) == ("jax,torch", "bf16", 2)
    assert (tiny.scaling_devices, tiny.scaling_image_size, tiny.input_images) == ("", 32, 8)
    full = run.parse_args(["--suite", "cpu"])
    assert (full.model, full.image_size, full.batch_size, full.precisions) == (
        "resnet50",
        224,
        32,
        "bf16,fp32",
    )
    assert full.frameworks == run.SUITES["cpu"]["frameworks"]
    assert full.fast_variants == ",".join(run.FAST_VARIANTS)
    assert run.parse_args(["--suite", "tpu", "--tiny"]).frameworks == "jax"


def test_targets_are_checked_on_full_runs_only():
    results = {"ratios": {"inference": {"bf16": {"jax/torch": 1.25}}}}
    full = run.parse_args(["--suite", "cpu"])
    assert run._targets(full, results) == [
        {
            "name": "CPU inference bf16: resnet-jax / PyTorch eager",
            "value": 1.25,
            "goal": ">= 1.0",
            "met": True,
        }
    ]
    assert run._targets(run.parse_args(["--suite", "cpu", "--tiny"]), results) == []


@pytest.mark.parametrize(
    "kind, precision, expected",
    [
        ("NVIDIA H200", "bf16", 989e12),
        ("NVIDIA H100 80GB HBM3", "fp32", 67e12),
        ("NVIDIA H100 PCIe", "bf16", 756e12),
        ("TPU v5 lite", "bf16", 197e12),
        ("TPU v4", "bf16", 275e12),
        ("TPU v4", "fp32", None),
        ("cpu", "bf16", None),
    ],
)
def test_peak_flops_by_device_kind(kind, precision, expected):
    assert common.peak_flops(kind, precision) == expected


def test_mfu_is_flops_over_time_over_peak_and_none_when_unknown():
    assert common.mfu(24.5e9 * 256, 0.05, 989e12) == pytest.approx(0.1268, abs=1e-4)
    assert common.mfu(1e9, 0.1, None) is None
    assert common.mfu(None, 0.1, 1e12) is None


class _Sleeper:
    def __init__(self, label, seconds):
        self.label, self.seconds, self.images_per_step, self.calls = label, seconds, 4, 0

    def setup(self):
        return {"ready": True}

    def run(self, steps):
        import time

        self.calls += steps
        time.sleep(self.seconds * steps)

    def close(self):
        pass


def test_interleave_times_every_runner_in_every_window():
    fast, slow = _Sleeper("fast", 0.001), _Sleeper("slow", 0.02)
    timed = common.interleave([fast, slow], windows=3, steps=2)
    assert fast.calls == slow.calls == 6
    assert len(timed["slow"].window_seconds) == 3
    assert timed["slow"].step_seconds >= 0.02
    assert timed["fast"].images_per_sec > timed["slow"].images_per_sec
    assert timed["fast"].as_dict()["ready"] is True


def test_cost_and_memory_analysis_of_a_compiled_function():
    compiled = jax.jit(lambda a, b: a @ b).lower(jnp.ones((64, 32)), jnp.ones((32, 16))).compile()
    assert compiled_flops(compiled) == pytest.approx(2 * 64 * 32 * 16, rel=0.1)
    mem = compiled_memory(compiled)
    assert mem["argument_bytes"] == 4 * (64 * 32 + 32 * 16)
    assert mem["output_bytes"] == 4 * 64 * 16


def test_count_all_reduces_in_hlo_text():
    text = """
      %all-reduce.1 = f32[2,8]{1,0} all-reduce(%a), replica_groups={{0,1}}, to_apply=%add
      %all-reduce-start.2 = (f32[3]{0}, f32[]) all-reduce-start(%b, %c), to_apply=%add
      %all-reduce-done.2 = (f32[3]{0}, f32[]) all-reduce-done(%all-reduce-start.2)
      %fusion = f32[8]{0} fusion(%all-reduce.1), kind=kLoop
    """
    assert count_all_reduces(text) == 2


def test_markdown_of_a_recorded_result_has_every_section():
    timed = {
        "images_per_sec": 100.0,
        "step_seconds": 0.32,
        "images_per_step": 32,
        "window_images_per_sec": [99.0, 100.0, 101.0],
        "compile_seconds": 12.0,
        "flops_per_image": 24.5e9,
        "mfu": None,
        "compiled_memory": {"total_bytes": 2**30},
        "device_peak_bytes": None,
    }
    results = {
        "suite": "gpu",
        "date": "2025-01-01T00:00:00Z",
        "command": "python -m benchmarks.run",
        "hardware": {
            "cpu_model": "x",
            "cpu_cores": 2,
            "usable_cores": 2,
            "memory_gb": 8,
            "platform": "gpu",
            "device_kind": "NVIDIA H200",
            "device_count": 1,
        },
        "versions": {"jax": "0.10.2"},
        "load_average_start": [0.1, 0.1, 0.1],
        "settings": {
            "model": "resnet50",
            "image_size": 224,
            "batch_size": 32,
            "steps": 1,
            "windows": 3,
            "warmup": 1,
        },
        "compare": {"train": {"bf16": {"jax": timed, "torch_compile": timed}}},
        "ratios": {"train": {"bf16": {"jax/torch_compile": 1.0}}},
        "targets": [{"name": "t", "value": 1.0, "goal": ">= 1.2", "met": False}],
    }
    md = report.markdown(results)
    assert "| train | bf16 | 100.0 | 100.0 | 1.00 |" in md
    assert "PyTorch compile" in md and "1,024" in md
    assert report.result_stem(results) == "gpu-nvidia-h200-20250101T000000Z"


def test_runs_recorded_separately_merge_into_one_record(tmp_path):
    def record(date, precision, ips, parts):
        return {
            "suite": "cpu",
            "date": date,
            "command": f"run {precision}",
            "hardware": {
                "device_kind": "cpu",
                "cpu_model": "x",
                "cpu_cores": 2,
                "usable_cores": 2,
                "memory_gb": 8,
                "platform": "cpu",
                "device_count": 1,
            },
            "versions": {"jax": "0.10.2"},
            "load_average_start": [1.0, 1.0, 1.0],
            "load_average_end": [2.0, 2.0, 2.0],
            "wall_seconds": 60.0,
            "notes": [],
            "settings": {
                "model": "resnet50",
                "image_size": 224,
                "batch_size": 32,
                "steps": 1,
                "windows": 3,
                "warmup": 1,
                "precisions": [precision],
                "parts": parts,
            },
            "compare": {
                "train": {precision: {"jax": {"images_per_sec": ips, "step_seconds": 32 / ips}}}
            },
            "ratios": {"train": {precision: {"jax/torch": 0.5}}},
            "targets": [],
        }

    a = record("2025-01-01T00:00:00Z", "bf16", 2.0, ["compare"])
    b = record("2025-01-01T00:10:00Z", "fp32", 3.0, ["compare"])
    merged = report.merge([a, b])
    assert set(merged["compare"]["train"]) == {"bf16", "fp32"}
    assert [r["command"] for r in merged["runs"]] == ["run bf16", "run fp32"]
    assert merged["wall_seconds"] == 120.0
    json_path, md_path = report.write_results(merged, str(tmp_path))
    assert json_path.endswith("cpu-cpu-20250101T000000Z-combined.json")
    assert md_path.endswith(".md") and "run fp32" in open(md_path).read()


def test_unknown_framework_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="Unknown framework"):
        run.main(["--frameworks", "jax,mxnet", "--out", str(tmp_path)])


@pytest.mark.slow
def test_keras_inference_runner_runs_resnet50_under_jit():
    from benchmarks.keras_bench import KerasInferRunner

    timed = common.interleave(
        [KerasInferRunner(precision="bf16", batch_size=1, image_size=32, num_classes=10)],
        windows=1,
        steps=1,
    )["keras"]
    assert timed.images_per_sec > 0
    assert timed.info["flops_per_image"] > 0
