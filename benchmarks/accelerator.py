"""One command for an accelerator: everything a first run on a GPU or TPU should measure.

    python -m benchmarks.accelerator          # ResNet-50 on every device JAX sees (<= 8 min, 1 GPU)
    python -m benchmarks.accelerator --tiny   # a small net on 2 CPU devices: the CI smoke run

On whatever devices JAX sees, one results row (device kind and count, jax/jaxlib/CUDA or
libtpu versions, date), written to ``benchmarks/results/accelerator-<platform>-<time>.{json,md}``:

1. ``train``: the training system's bf16 train step on synthetic device-resident data at
   per-device batch 64/128/256 (a batch that does not fit is recorded as skipped), under
   ``shard_map`` and ``pmap``: images/s, step time, compile time, peak device memory and MFU
   (XLA's cost analysis of the compiled step over the device's peak bf16 FLOP/s).
2. ``end_to_end``: the same step at the best batch, fed by the real host input pipeline
   (JPEG files decoded, cropped and flipped on the host), so an input-bound run shows itself.
3. ``torch_compile``: torchvision ResNet-50 with ``torch.compile``, channels_last and bf16
   autocast at the same batch on one device, interleaved with ours, and the ratio (only where
   a CUDA PyTorch is importable).
4. ``numerics``: a converted ResNet-50 on real photographs, logits on the device vs
   torchvision on the CPU, with ``jax.default_matmul_precision('highest')`` and the default.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.metadata
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # PyTorch shares the GPU.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from benchmarks.common import write_record  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
# The MLPerf per-GPU training rate and the side-by-side target, for H200 rows only.
H200_TARGETS = {"images_per_sec": 7800.0, "vs_torch_compile": 1.2}
PLUGINS = ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-cuda12-pjrt", "libtpu", "libtpu-nightly")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one invocation measures (the full plan, or the tiny CI one)."""

    model: str = "resnet50"
    model_kwargs: tuple = ()
    image_size: int = 224
    batches: tuple[int, ...] = (64, 128, 256)  # per device
    parallelisms: tuple[str, ...] = ("shard_map", "pmap")
    steps: int = 20
    windows: int = 3
    jpegs: int = 1024  # files of the end-to-end run's folder
    jpeg_size: tuple[int, int] = (375, 500)
    numerics_model: str = "resnet50"
    numerics_size: int = 224


TINY = Plan(
    model="resnet18",
    model_kwargs=(("stage_widths", (8, 8, 8, 8)), ("stem_width", 8)),
    image_size=32,
    batches=(2,),
    steps=2,
    windows=2,
    jpegs=48,
    jpeg_size=(48, 64),
    numerics_model="resnet18",
    numerics_size=64,
)


def _log(message: str) -> None:
    print(f"[accelerator {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _out_of_memory(error: BaseException) -> bool:
    text = f"{type(error).__name__} {error}".lower()
    return any(s in text for s in ("resource_exhausted", "out of memory", "oom"))


def _free() -> None:
    """Drops compiled steps and their buffers between configurations."""
    from benchmarks import jax_bench

    jax_bench._COMPILED.clear()
    gc.collect()


def _timed(runners: list[Any], plan: Plan) -> dict[str, dict[str, Any]]:
    from benchmarks.common import interleave, mfu

    timed = interleave(runners, windows=plan.windows, steps=plan.steps, log=_log)
    rows = {}
    for label, t in timed.items():
        row = t.as_dict()
        per_device = row.get("flops_per_step")
        row["mfu"] = mfu(per_device, t.step_seconds, row.get("peak_flops"))
        rows[label] = row
    return rows


def _config(plan: Plan, batch: int, parallelism: str, num_devices: int, image_dtype: str):
    from benchmarks.jax_bench import JaxConfig

    return JaxConfig(
        model=plan.model,
        precision="bf16",
        batch_size=batch,
        image_size=plan.image_size,
        num_devices=num_devices,
        parallelism=parallelism,
        image_dtype=image_dtype,
        model_kwargs=plan.model_kwargs,
    )


def measure_train(plan: Plan, num_devices: int) -> list[dict[str, Any]]:
    """Synthetic device-resident data, every per-device batch under both parallelisms."""
    from benchmarks.jax_bench import JaxTrainRunner

    rows = []
    for parallelism in plan.parallelisms:
        for batch in plan.batches:
            cfg = _config(plan, batch, parallelism, num_devices, "uint8")
            label = f"{parallelism} b{batch}"
            try:
                row = _timed([JaxTrainRunner(cfg, label=label)], plan)[label]
            except Exception as e:
                if not _out_of_memory(e):
                    raise
                row = {"skipped": f"out of memory: {str(e).splitlines()[0][:200]}"}
            rows.append({"parallelism": parallelism, "per_device_batch": batch, **row})
            _free()
    return rows


class _PipelineRunner:
    """The compiled train step fed by the real input pipeline through the device prefetch."""

    def __init__(self, cfg: Any, data: Any, label: str) -> None:
        from benchmarks.jax_bench import JaxTrainRunner

        self._inner = JaxTrainRunner(cfg, label=label, feed="prefetch")
        self.cfg, self.data, self.label = cfg, data, label
        self.images_per_step = self._inner.images_per_step

    def setup(self) -> dict[str, Any]:
        from resnet_jax import parallel as par
        from resnet_jax.data import pipeline

        info = self._inner.setup()
        batches = pipeline.create_train_iterator(
            self.data, global_batch_size=self.images_per_step, seed=0
        )
        self._inner._prefetched = par.prefetch_to_devices(batches, self._inner._parallel, size=2)
        self._inner.run(2)  # Fills the pipeline's buffers.
        return {**info, "feed": "input pipeline (JPEG decode, Inception crop, flip)"}

    def run(self, steps: int) -> None:
        self._inner.run(steps)

    def close(self) -> None:
        self._inner.close()


def measure_end_to_end(plan: Plan, num_devices: int, batch: int) -> dict[str, Any]:
    """The best synthetic batch again, fed from JPEG files by the host pipeline."""
    from benchmarks.input_bench import write_jpegs
    from benchmarks.jax_bench import JaxTrainRunner
    from resnet_jax.data import pipeline

    with tempfile.TemporaryDirectory(prefix="accel-jpegs-") as root:
        write_jpegs(root, plan.jpegs, size=plan.jpeg_size)
        data = pipeline.default_data_config()
        data.update(dataset="folder", folder=root, image_size=plan.image_size, image_dtype="uint8")
        cfg = _config(plan, batch, "shard_map", num_devices, "uint8")
        runners = [
            JaxTrainRunner(cfg, label="synthetic"),
            _PipelineRunner(cfg, data, label="input pipeline"),
        ]
        rows = _timed(runners, plan)
    _free()
    synthetic, fed = rows["synthetic"], rows["input pipeline"]
    return {
        "per_device_batch": batch,
        "synthetic_images_per_sec": synthetic["images_per_sec"],
        "pipeline_images_per_sec": fed["images_per_sec"],
        "pipeline_over_synthetic": fed["images_per_sec"] / synthetic["images_per_sec"],
        "host_cores": os.cpu_count(),
        "input_bound": fed["images_per_sec"] < 0.9 * synthetic["images_per_sec"],
    }


def measure_torch_compile(plan: Plan, batch: int) -> dict[str, Any]:
    """Ours and torchvision + torch.compile (channels_last, bf16 autocast) on one device."""
    try:
        import torch
    except ImportError:
        return {"skipped": "PyTorch is not installed"}
    if not torch.cuda.is_available():
        return {"skipped": f"PyTorch {torch.__version__} sees no CUDA device"}
    from benchmarks.jax_bench import JaxTrainRunner
    from benchmarks.torch_bench import TorchTrainRunner

    cfg = _config(plan, batch, "shard_map", 1, "float32")
    runners = [
        JaxTrainRunner(cfg, label="resnet-jax"),
        TorchTrainRunner(
            precision="bf16",
            batch_size=batch,
            image_size=plan.image_size,
            compiled=True,
            label="torch.compile",
            arch=plan.model,
        ),
    ]
    rows = _timed(runners, plan)
    _free()
    ours, theirs = rows["resnet-jax"], rows["torch.compile"]
    return {
        "per_device_batch": batch,
        "jax_images_per_sec": ours["images_per_sec"],
        "torch_compile_images_per_sec": theirs["images_per_sec"],
        "jax_over_torch_compile": ours["images_per_sec"] / theirs["images_per_sec"],
        "torch_first_step_seconds": theirs.get("first_step_seconds"),
        "torch": torch.__version__,
    }


def measure_numerics(plan: Plan) -> dict[str, Any]:
    """Converted torchvision weights (seeded random init, randomised BN statistics) on
    scikit-learn's photographs: logits on the device vs PyTorch on the CPU."""
    import jax
    import numpy as np

    try:
        from resnet_jax.convert.compare import relative_difference
        from resnet_jax.convert.numerics import build_reference, make_inputs
    except ImportError as e:
        return {"skipped": f"reference frameworks missing: {e}"}
    from benchmarks.jax_bench import JaxConfig

    try:
        import torch

        reference = build_reference("torchvision", plan.numerics_model, None, seed=0)
    except ImportError as e:
        return {"skipped": f"PyTorch/torchvision missing: {e}"}
    inputs = make_inputs(reference.preset, plan.numerics_size, n_random=0)
    with torch.no_grad():  # float32 on the CPU: no TF32, no GPU kernels in the reference.
        nchw = torch.from_numpy(np.ascontiguousarray(inputs.x.transpose(0, 3, 1, 2)))
        theirs = reference.model.cpu().eval()(nchw).numpy()
    model = JaxConfig(plan.numerics_model, "fp32").build_model()  # As torchvision's: fp32
    device = jax.devices()[0]
    variables = jax.device_put(reference.variables, device)
    x = jax.device_put(inputs.x, device)
    forward = jax.jit(lambda v, x: model.apply(v, x))
    out: dict[str, Any] = {"model": plan.numerics_model, "images": inputs.labels}
    for name, precision in (("highest", "highest"), ("default", None)):
        with jax.default_matmul_precision(precision):
            ours = np.asarray(forward(variables, x))
        top5_ours = np.argsort(-ours, axis=1)[:, :5]
        top5_theirs = np.argsort(-theirs, axis=1)[:, :5]
        out[name] = {
            "max_abs_diff": float(np.abs(ours - theirs).max()),
            "rel_max_diff": relative_difference(ours, theirs),
            "top5_equal": int(
                sum(np.array_equal(a, b) for a, b in zip(top5_ours, top5_theirs, strict=True))
            ),
            "top1_equal": int((top5_ours[:, 0] == top5_theirs[:, 0]).sum()),
            "count": len(inputs.labels),
        }
    return out


def environment() -> dict[str, Any]:
    import jax

    from benchmarks.common import hardware, now_utc, versions

    devices = jax.devices()
    plugins = {}
    for name in PLUGINS:
        try:
            plugins[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {
        "date": now_utc(),
        "platform": devices[0].platform,
        "device_kind": devices[0].device_kind,
        "device_count": len(devices),
        "process_count": jax.process_count(),
        "versions": {**versions(), **plugins},
        "jax_environment": jax.print_environment_info(return_string=True),
        "hardware": hardware(),
    }


def _targets(result: dict[str, Any]) -> dict[str, Any] | None:
    if result["tiny"] or "H200" not in result["device_kind"]:
        return None
    best = result["best_train"]
    ratio = result["torch_compile"].get("jax_over_torch_compile")
    return {
        "images_per_sec": H200_TARGETS["images_per_sec"],
        "images_per_sec_met": best is not None
        and best["images_per_sec"] >= H200_TARGETS["images_per_sec"],
        "vs_torch_compile": H200_TARGETS["vs_torch_compile"],
        "vs_torch_compile_met": ratio is not None and ratio >= H200_TARGETS["vs_torch_compile"],
    }


def run(plan: Plan, *, tiny: bool) -> dict[str, Any]:
    import jax

    start = time.perf_counter()
    env = environment()
    _log(f"{env['device_count']} x {env['device_kind']}; plan {plan}")
    n = jax.device_count()
    train = measure_train(plan, n)
    fitted = [r for r in train if "skipped" not in r]
    best = max(fitted, key=lambda r: r["images_per_sec"]) if fitted else None
    result = {**env, "tiny": tiny, "plan": dataclasses.asdict(plan), "train": train}
    result["best_train"] = None if best is None else {
        k: best[k] for k in ("parallelism", "per_device_batch", "images_per_sec", "mfu")
    }  # fmt: skip
    if best is not None:
        _log("end to end with the input pipeline ...")
        result["end_to_end"] = measure_end_to_end(plan, n, best["per_device_batch"])
        _log("torch.compile side by side ...")
        result["torch_compile"] = measure_torch_compile(plan, best["per_device_batch"])
    else:
        result["end_to_end"] = result["torch_compile"] = {"skipped": "no batch size fits"}
    _log("numerics ...")
    result["numerics"] = measure_numerics(plan)
    result["targets"] = _targets(result)
    result["seconds"] = time.perf_counter() - start
    return result


def _fmt(v: Any, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def markdown(result: dict[str, Any]) -> str:
    v = result["versions"]
    lines = [
        f"## {result['device_count']} x {result['device_kind']} ({result['date']})"
        + (" - tiny smoke run, not a measurement" if result["tiny"] else ""),
        "",
        ", ".join(f"{k} {v[k]}" for k in ("jax", "jaxlib", *PLUGINS) if v.get(k))
        + f"; {result['plan']['model']} at {result['plan']['image_size']} px, bf16; "
        f"{result['seconds']:.0f} s in all.",
        "",
        "| parallelism | batch/device | images/s | step (ms) | compile (s) | peak memory (GiB) "
        "| MFU |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["train"]:
        if "skipped" in r:
            lines.append(f"| {r['parallelism']} | {r['per_device_batch']} | {r['skipped']} ||||| ")
            continue
        peak = r.get("device_peak_bytes")
        lines.append(
            f"| {r['parallelism']} | {r['per_device_batch']} | {r['images_per_sec']:.1f} | "
            f"{1e3 * r['step_seconds']:.1f} | {r['compile_seconds']:.1f} | "
            f"{_fmt(peak and peak / 2**30, '.2f')} | {_fmt(r['mfu'], '.3f')} |"
        )
    e2e = result["end_to_end"]
    if "skipped" not in e2e:
        lines += [
            "",
            f"End to end (input pipeline, {e2e['host_cores']} host cores): "
            f"{e2e['pipeline_images_per_sec']:.1f} images/s vs "
            f"{e2e['synthetic_images_per_sec']:.1f} synthetic "
            f"({e2e['pipeline_over_synthetic']:.2f}x)"
            + ("; input-bound." if e2e["input_bound"] else "."),
        ]
    tc = result["torch_compile"]
    lines += [
        "",
        "torch.compile: "
        + (
            tc["skipped"]
            if "skipped" in tc
            else f"{tc['torch_compile_images_per_sec']:.1f} images/s vs ours "
            f"{tc['jax_images_per_sec']:.1f} at batch {tc['per_device_batch']}: "
            f"{tc['jax_over_torch_compile']:.2f}x"
        ),
    ]
    nu = result["numerics"]
    if "skipped" in nu:
        lines += ["", f"Numerics: {nu['skipped']}"]
    else:
        for name in ("highest", "default"):
            r = nu[name]
            lines.append(
                f"\nNumerics ({nu['model']}, matmul precision {name}): rel max diff "
                f"{r['rel_max_diff']:.2e} (abs {r['max_abs_diff']:.2e}), top-5 equal on "
                f"{r['top5_equal']}/{r['count']} photographs"
            )
    if result["targets"]:
        t = result["targets"]
        lines += [
            "",
            f"H200 targets: >= {t['images_per_sec']:.0f} images/s met: {t['images_per_sec_met']};"
            f" >= {t['vs_torch_compile']}x torch.compile met: {t['vs_torch_compile_met']}",
        ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="small net, 2 CPU devices: CI smoke")
    parser.add_argument("--out", default=RESULTS, help="folder for the results files")
    args = parser.parse_args(argv)
    import jax

    if args.tiny:  # Behaviour, not speed: XLA's optimisations off, as in the tests.
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", 2)
        jax.config.update("jax_disable_most_optimizations", True)
    result = run(TINY if args.tiny else Plan(), tiny=args.tiny)
    text = markdown(result)
    print(text)
    stem = write_record(
        args.out,
        f"accelerator-{result['platform']}-{'tiny-' if args.tiny else ''}"
        f"{result['date'].replace(':', '')}",
        result,
        text,
    )
    _log(f"wrote {stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
