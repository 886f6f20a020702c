"""Benchmark CLI: resnet-jax against PyTorch and Keras, the make-it-fast ablations, the input
pipeline and data-parallel scaling; writes a JSON record and a markdown table.

    python -m benchmarks.run --suite cpu                  # the recorded 2-core CPU run
    python -m benchmarks.run --suite gpu                  # one GPU: H200/H100/A100
    python -m benchmarks.run --suite tpu --frameworks jax,keras
    python -m benchmarks.run --parts compare --batch-size 16 --frameworks jax,torch
    python -m benchmarks.run --tiny                       # a smoke run of the harness

Suites and --tiny only set defaults (batch, steps, windows, frameworks); every flag overrides
them.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

# Before JAX, Keras or PyTorch initialise: Keras on JAX; JAX allocates GPU memory on demand
# so that PyTorch can share the device; a cold inductor cache so compile times are real.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks import common, report  # noqa: E402
from resnet_jax.convert.torchvision import TORCHVISION_MODELS  # noqa: E402

ENV_RECORDED = (
    "XLA_FLAGS",
    "XLA_PYTHON_CLIENT_PREALLOCATE",
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "JAX_PLATFORMS",
    "KERAS_BACKEND",
)
PARTS = ("compare", "fast", "input", "scaling")
FRAMEWORKS = (
    "jax",
    "jax_cpu_fast",
    "jax_space_to_depth",
    "jax_v1",
    "torch",
    "torch_compile",
    "keras",
)
TASKS = ("train", "inference")
# resnet-jax rows beside the default one: what the JaxConfig changes.
JAX_VARIANTS: dict[str, dict[str, Any]] = {
    "jax_v1": {"model": "resnet50_v1"},  # Keras's architecture
    "jax_cpu_fast": {"backend": "cpu_fast"},  # the opt-in CPU backend (resnet_jax.backend)
    "jax_space_to_depth": {"space_to_depth": True},  # the MLPerf TPU stem
}
SUITES: dict[str, dict[str, Any]] = {
    "cpu": dict(
        batch_size=32,
        steps=1,
        windows=3,
        warmup=1,
        frameworks="jax,jax_cpu_fast,torch,torch_compile,keras",
        fast_batch_size=8,
        scaling_devices="1,2,4,8",
        scaling_batch_size=2,
        scaling_image_size=224,
    ),
    "gpu": dict(
        batch_size=256,
        steps=20,
        windows=5,
        warmup=5,
        frameworks="jax,torch,torch_compile,keras",
        fast_batch_size=256,
        scaling_devices="",
        scaling_batch_size=256,
        scaling_image_size=224,
    ),
    "tpu": dict(
        batch_size=256,
        steps=20,
        windows=5,
        warmup=5,
        frameworks="jax,keras",
        fast_batch_size=256,
        scaling_devices="",
        scaling_batch_size=256,
        scaling_image_size=224,
    ),
}
FAST_VARIANTS = {
    "baseline": "bf16 (fp32 params, fp32 BN statistics), NHWC, donated state, data on device, "
    "metrics summed on device",
    "fp32": "float32 compute",
    "no_donation": "state not donated (a new buffer for every output)",
    "host_sync": "loss read on the host after every step",
    "host_feed": "NumPy batch transferred every step, no prefetch",
    "prefetch": "NumPy batch transferred through prefetch_to_devices(size=2)",
    "prefetch_uint8": "uint8 pixels through prefetch_to_devices, normalised in the step",
    "space_to_depth": "space-to-depth stem (4x4 conv on 2x2 blocks)",
    "remat": "nn.remat on every block",
    "cpu_fast": "backend 'cpu_fast': 1x1 convolutions as matrix products (CPU only)",
}
# --tiny: a smoke run of the harness in about a minute. Every framework runs the same network
# (resnet18, 10 classes) at 32x32, so side-by-side rows stay comparable; no targets are checked.
TINY = dict(
    model="resnet18",
    image_size=32,
    batch_size=2,
    steps=1,
    windows=2,
    warmup=1,
    precisions="bf16",
    fast_batch_size=2,
    fast_variants="baseline,host_sync",
    scaling_devices="",  # its compile alone would double the run; --scaling-devices 2 adds it
    scaling_batch_size=1,
    scaling_image_size=32,
    input_images=8,
    input_batches=1,
)
TINY_FRAMEWORKS = ("jax", "torch")
# Defaults of a full run where the suites leave them open.
DEFAULTS = dict(
    model="resnet50",
    image_size=224,
    precisions="bf16,fp32",
    fast_variants=",".join(FAST_VARIANTS),
    input_images=256,
    input_batches=48,
)


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default=None,
        help="defaults for the hardware; by default the JAX backend's platform",
    )
    p.add_argument("--parts", default=",".join(PARTS), help=f"subset of {','.join(PARTS)}")
    p.add_argument("--model", help="resnet-jax model name (default resnet50)")
    p.add_argument("--batch-size", type=int, help="per-device batch of the side-by-side runs")
    p.add_argument("--image-size", type=int, help="default 224")
    p.add_argument("--steps", type=int, help="steps per timed window")
    p.add_argument("--windows", type=int, help="timed windows (the median is reported)")
    p.add_argument("--warmup", type=int, help="untimed steps after compiling")
    p.add_argument("--frameworks", help=f"subset of {','.join(FRAMEWORKS)}")
    p.add_argument("--precisions", help="subset of bf16,fp32 (default both)")
    p.add_argument("--tasks", default="train,inference", help="subset of train,inference")
    p.add_argument("--fast-batch-size", type=int, help="batch of the make-it-fast ablations")
    p.add_argument("--fast-variants", help="default: all of them")
    p.add_argument("--scaling-devices", help="device counts, e.g. 1,2,4,8 ('' = skip)")
    p.add_argument("--scaling-batch-size", type=int, help="per-device batch for scaling")
    p.add_argument("--scaling-image-size", type=int)
    p.add_argument("--input-images", type=int, help="JPEGs for the input bench (default 256)")
    p.add_argument("--input-batches", type=int, help="timed input batches (default 48)")
    p.add_argument("--torch-compile-mode", default=None, help="e.g. max-autotune")
    p.add_argument(
        "--tiny",
        action="store_true",
        help="a smoke run in about a minute: resnet18 with 10 classes in every framework, "
        "32x32 images, batch 2, one step per window, no scaling; no targets checked",
    )
    p.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = p.parse_args(argv)
    if args.suite is None:
        import jax

        platform = jax.devices()[0].platform
        args.suite = platform if platform in SUITES else "cpu"
    suite = SUITES[args.suite]
    if args.tiny:
        tiny_frameworks = [f for f in _csv(suite["frameworks"]) if f in TINY_FRAMEWORKS]
        suite = {**suite, **TINY, "frameworks": ",".join(tiny_frameworks)}
    for key, value in {**DEFAULTS, **suite}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def _check_choices(values: list[str], allowed: Sequence[str], what: str) -> None:
    unknown = [v for v in values if v not in allowed]
    if unknown:
        raise SystemExit(f"Unknown {what} {unknown}; choose from {', '.join(allowed)}.")


def _runners(args: argparse.Namespace, task: str, precision: str) -> list[Any]:
    from benchmarks import jax_bench, keras_bench, torch_bench

    jcfg = _jax_config(args, precision, args.batch_size)
    num_classes = jcfg.num_classes
    common_kw = dict(
        precision=precision,
        batch_size=args.batch_size,
        image_size=args.image_size,
        num_classes=num_classes,
        warmup=args.warmup,
    )
    train = task == "train"
    runners: list[Any] = []
    for fw in args.framework_list:
        if fw == "jax":
            cls = jax_bench.JaxTrainRunner if train else jax_bench.JaxInferRunner
            runners.append(cls(jcfg, label="jax", warmup=args.warmup))
        elif fw in JAX_VARIANTS:
            cfg = dataclasses.replace(jcfg, **JAX_VARIANTS[fw])
            cls = jax_bench.JaxTrainRunner if train else jax_bench.JaxInferRunner
            runners.append(cls(cfg, label=fw, warmup=args.warmup))
        elif fw in ("torch", "torch_compile"):
            cls = torch_bench.TorchTrainRunner if train else torch_bench.TorchInferRunner
            runners.append(
                cls(
                    compiled=fw == "torch_compile",
                    arch=args.model,
                    compile_mode=args.torch_compile_mode,
                    **common_kw,
                )
            )
        elif fw == "keras":
            cls = keras_bench.KerasTrainRunner if train else keras_bench.KerasInferRunner
            runners.append(cls(**common_kw))
    return runners


def _jax_config(args: argparse.Namespace, precision: str, batch_size: int, **kw: Any):
    from benchmarks.jax_bench import JaxConfig

    return JaxConfig(
        model=args.model,
        precision=precision,
        batch_size=batch_size,
        image_size=args.image_size,
        num_classes=10 if args.tiny else 1000,
        **kw,
    )


def run_compare(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """Side by side: every framework, same batch, resolution and precision, interleaved."""
    compare: dict[str, Any] = {}
    ratios: dict[str, Any] = {}
    for task in args.task_list:
        for precision in args.precision_list:
            _log(f"compare: {task} {precision}")
            timed = common.interleave(
                _runners(args, task, precision), windows=args.windows, steps=args.steps, log=_log
            )
            rows = {label: t.as_dict() for label, t in timed.items()}
            _add_derived(rows, precision, args.model)
            compare.setdefault(task, {})[precision] = rows
            ratios.setdefault(task, {})[precision] = _ratios(rows)
            _log(f"  ratios: {ratios[task][precision]}")
    results["compare"], results["ratios"] = compare, ratios


def _add_derived(rows: dict[str, dict[str, Any]], precision: str, model: str) -> None:
    """MFU for each row (PyTorch rows use resnet-jax's FLOPs: the same architecture) and
    torch.compile's compile time (first step less the median step)."""
    import jax

    peak = common.peak_flops(jax.devices()[0].device_kind, precision)
    ref = rows.get("jax", {}).get("flops_per_image")
    for label, r in rows.items():
        if r.get("compiled"):
            r["compile_seconds"] = max(r["first_step_seconds"] - r["step_seconds"], 0.0)
        if r.get("flops_per_image") is None and label.startswith("torch") and ref:
            r["flops_per_image"] = ref
            r["flops_source"] = f"resnet-jax {model} (same architecture, XLA cost analysis)"
        r["peak_flops"] = peak
        flops = r.get("flops_per_image")
        r["mfu"] = common.mfu(
            flops * r["images_per_step"] if flops else None, r["step_seconds"], peak
        )


def _ratios(rows: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    jax_ips = rows.get("jax", {}).get("images_per_sec")
    for other in ("jax_space_to_depth", "torch", "torch_compile", "keras"):
        if jax_ips and other in rows:
            out[f"jax/{other}"] = jax_ips / rows[other]["images_per_sec"]
    if jax_ips and "jax_cpu_fast" in rows:
        out["jax_cpu_fast/jax"] = rows["jax_cpu_fast"]["images_per_sec"] / jax_ips
    if "jax_v1" in rows and "keras" in rows:
        out["jax_v1/keras"] = rows["jax_v1"]["images_per_sec"] / rows["keras"]["images_per_sec"]
    if "jax_space_to_depth" in rows and "torch" in rows:
        s2d = rows["jax_space_to_depth"]["images_per_sec"]
        out["jax_space_to_depth/torch"] = s2d / rows["torch"]["images_per_sec"]
    return out


def run_fast(args: argparse.Namespace, results: dict[str, Any]) -> None:
    """The make-it-fast ablations of the resnet-jax train step, interleaved."""
    from benchmarks.jax_bench import JaxTrainRunner

    base = "bf16"
    bs = args.fast_batch_size
    variants = _csv(args.fast_variants)
    _check_choices(variants, list(FAST_VARIANTS), "fast variant")
    configs = {
        "baseline": (_jax_config(args, base, bs), {}),
        "fp32": (_jax_config(args, "fp32", bs), {}),
        "no_donation": (_jax_config(args, base, bs, donate=False), {}),
        "host_sync": (_jax_config(args, base, bs), {"host_sync": True}),
        "host_feed": (_jax_config(args, base, bs), {"feed": "host"}),
        "prefetch": (_jax_config(args, base, bs), {"feed": "prefetch"}),
        "prefetch_uint8": (_jax_config(args, base, bs, image_dtype="uint8"), {"feed": "prefetch"}),
        "space_to_depth": (_jax_config(args, base, bs, space_to_depth=True), {}),
        "remat": (_jax_config(args, base, bs, remat=True), {}),
        "cpu_fast": (_jax_config(args, base, bs, backend="cpu_fast"), {}),
    }
    runners = [
        JaxTrainRunner(configs[v][0], label=v, warmup=args.warmup, **configs[v][1])
        for v in variants
    ]
    _log(f"fast: {', '.join(variants)} at batch {bs}")
    timed = common.interleave(runners, windows=args.windows, steps=args.steps, log=_log)
    results["fast"] = {
        "batch_size": bs,
        "image_size": args.image_size,
        "base_precision": base,
        "descriptions": {v: FAST_VARIANTS[v] for v in variants},
        "variants": {label: t.as_dict() for label, t in timed.items()},
    }


def run_input(args: argparse.Namespace, results: dict[str, Any]) -> None:
    from benchmarks.input_bench import measure_input_pipeline

    _log("input pipeline")
    results["input_pipeline"] = measure_input_pipeline(
        num_images=args.input_images,
        image_size=args.image_size,
        batch_size=min(args.batch_size, args.input_images),
        batches=args.input_batches,
        log=_log,
    )


def run_scaling(args: argparse.Namespace, results: dict[str, Any]) -> None:
    import jax

    from benchmarks import scaling

    counts = [int(c) for c in _csv(args.scaling_devices)]
    platform = jax.devices()[0].platform
    if platform != "cpu":
        available = jax.device_count()
        counts = [c for c in counts or _powers_of_two(available) if c <= available]
        if len(counts) < 2:
            _log("scaling: skipped (one accelerator)")
            results["scaling_skipped"] = f"{jax.device_count()} {platform} device(s)"
            return
    if not counts:
        return
    precision = "bf16"
    cfg = dataclasses.replace(
        _jax_config(args, precision, args.scaling_batch_size),
        image_size=args.scaling_image_size,
    )
    kw = dict(windows=args.windows, steps=args.steps, warmup=args.warmup)
    _log(f"scaling over {counts} {'simulated ' if platform == 'cpu' else ''}devices")
    if platform == "cpu":
        rows = scaling.measure_simulated(cfg, counts, log=_log, **kw)
        kind = "simulated CPU"
        note = (
            f"All simulated devices share the same {common.usable_cores()} CPU cores: this "
            "measures the overhead of the partitioned step and its collectives, not a speedup "
            "(ideal efficiency here is at most cores / devices)."
        )
    else:
        rows = scaling.measure_real_devices(cfg, counts, **kw)
        kind, note = platform, ""
    results["scaling"] = {
        "kind": kind,
        "note": note,
        "per_device_batch": cfg.batch_size,
        "image_size": cfg.image_size,
        "precision": precision,
        "rows": rows,
    }


def _powers_of_two(n: int) -> list[int]:
    out, c = [], 1
    while c <= n:
        out.append(c)
        c *= 2
    return out


def _targets(args: argparse.Namespace, results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, checked against this run's numbers (none for a --tiny run)."""
    compare, ratios = results.get("compare", {}), results.get("ratios", {})
    out: list[dict[str, Any]] = []
    if args.tiny:
        return out
    if args.suite == "cpu":
        for precision, r in ratios.get("inference", {}).items():
            if "jax/torch" in r:
                out.append(
                    {
                        "name": f"CPU inference {precision}: resnet-jax / PyTorch eager",
                        "value": r["jax/torch"],
                        "goal": ">= 1.0",
                        "met": r["jax/torch"] >= 1.0,
                    }
                )
    if args.suite == "gpu":
        r = ratios.get("train", {}).get("bf16", {})
        if "jax/torch_compile" in r:
            out.append(
                {
                    "name": "GPU train bf16: resnet-jax / torch.compile",
                    "value": r["jax/torch_compile"],
                    "goal": ">= 1.2",
                    "met": r["jax/torch_compile"] >= 1.2,
                }
            )
        jax_row = compare.get("train", {}).get("bf16", {}).get("jax")
        if jax_row:
            ips = jax_row["images_per_sec"]
            out.append(
                {
                    "name": "GPU train bf16: resnet-jax images/s",
                    "value": ips,
                    "goal": ">= 5000",
                    "met": ips >= 5000,
                }
            )
    return out


def main(argv: Sequence[str] | None = None) -> tuple[str, str]:
    """Runs the selected parts; returns the paths of the JSON and markdown files."""
    args = parse_args(argv)
    parts = _csv(args.parts)
    _check_choices(parts, PARTS, "part")
    args.framework_list = _csv(args.frameworks)
    _check_choices(args.framework_list, FRAMEWORKS, "framework")
    args.precision_list = _csv(args.precisions)
    _check_choices(args.precision_list, common.PRECISIONS, "precision")
    args.task_list = _csv(args.tasks)
    _check_choices(args.task_list, TASKS, "task")
    notes = []
    torch_fws = [f for f in args.framework_list if f.startswith("torch")]
    if torch_fws and args.model not in TORCHVISION_MODELS:
        raise SystemExit(f"--model {args.model} has no torchvision counterpart; drop {torch_fws}.")
    if "keras" in args.framework_list and args.model != "resnet50":
        raise SystemExit(
            "The Keras runner builds keras.applications.ResNet50: use --model resnet50."
        )
    if args.suite == "cpu" and torch_fws and "torch" not in sys.modules:
        # OpenMP threads that spin at barriers collapse when other processes share the cores;
        # passive waiting keeps PyTorch's CPU numbers stable on a loaded machine.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "torch_compile" in args.framework_list:
        from benchmarks.torch_bench import compile_available

        ok, why = compile_available()
        if not ok:
            args.framework_list.remove("torch_compile")
            notes.append(f"torch.compile skipped: {why}.")
        os.environ.setdefault(
            "TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="resnet_jax_inductor_")
        )
    results: dict[str, Any] = {
        "suite": args.suite,
        "date": common.now_utc(),
        "command": "python -m benchmarks.run "
        + shlex.join(argv if argv is not None else sys.argv[1:]),
        "hardware": common.hardware(),
        "versions": common.versions(),
        "load_average_start": common.load_average(),
        "settings": {
            "model": args.model,
            "num_classes": 10 if args.tiny else 1000,
            "tiny": args.tiny,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "steps": args.steps,
            "windows": args.windows,
            "warmup": args.warmup,
            "frameworks": args.framework_list,
            "precisions": args.precision_list,
            "tasks": args.task_list,
            "parts": parts,
            "optimizer": "SGD momentum 0.9, lr 0.1, no weight decay (all frameworks)",
            "keras_api": "stateless_call + jax.value_and_grad + optimizer.stateless_apply, jit",
            "torch": "channels_last, autocast bf16, torch.compile of the model "
            f"(mode {args.torch_compile_mode or 'default'}, cold inductor cache)",
            "env": {k: os.environ.get(k) for k in ENV_RECORDED},
        },
        "notes": notes,
    }
    start = time.perf_counter()
    for part, fn in (
        ("compare", run_compare),
        ("fast", run_fast),
        ("input", run_input),
        ("scaling", run_scaling),
    ):
        if part in parts:
            fn(args, results)
    results["targets"] = _targets(args, results)
    results["load_average_end"] = common.load_average()
    results["wall_seconds"] = time.perf_counter() - start
    paths = report.write_results(results, args.out)
    _log(f"wrote {paths[0]} and {paths[1]} in {results['wall_seconds']:.0f} s")
    return paths


if __name__ == "__main__":
    main()
