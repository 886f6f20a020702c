"""Inference latency of one network in every runtime it is exported to, side by side.

    python -m benchmarks.export_bench                 # ResNet-50, 224 px, batch 1 and 8
    python -m benchmarks.export_bench --tiny          # smoke test: resnet18 at 32 px

JAX (the project's own CPU inference program), ONNX Runtime, LiteRT float32 and int8 (the
files of ``resnet_jax.export``, int8 calibrated on crops of scikit-learn's photographs), and
PyTorch eager (torchvision's resnet50, channels-last, float32; with all cores and with one
thread). Weights are random: latency
does not depend on them. Median milliseconds per batch after warm-up; the LiteRT files take
one image per call, so their batch of 8 is 8 calls. Prints a table and writes it, with the
machine and versions, to benchmarks/results/export-<time>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from benchmarks.common import hardware, now_utc, usable_cores, versions, write_record
from resnet_jax.convert.inputs import sample_photographs
from resnet_jax.data.presets import Preset
from resnet_jax.export import export_predictor
from resnet_jax.export.runtime import LiteRTRunner, OnnxRunner
from resnet_jax.inference import random_predictor

RESULTS = Path(__file__).parent / "results"
ROWS = ("jax", "onnxruntime", "litert_float32", "litert_int8", "torch_eager", "torch_eager_1t")
LABELS = {
    "jax": "JAX CPU (resnet-jax, XLA)",
    "onnxruntime": "ONNX Runtime (model.onnx)",
    "litert_float32": "LiteRT float32 (model_float32.tflite)",
    "litert_int8": "LiteRT int8 (model_int8.tflite)",
    "torch_eager": "PyTorch eager (torchvision)",
    "torch_eager_1t": "PyTorch eager, 1 thread",
}


def _calibration_folder(folder: Path, count: int) -> Path:
    """Crops of scikit-learn's two photographs, as JPEG files."""
    rng = np.random.default_rng(0)
    photos = [Image.open(p).convert("RGB") for p in sample_photographs()[:2]]
    for i in range(count):
        img = photos[i % 2]
        w, h = img.size
        x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
        img.crop((x, y, x + w // 2, y + h // 2)).save(folder / f"{i:03d}.jpg")
    return folder


def _time(runners: dict, x: np.ndarray, warmup: int, iters: int) -> dict[str, float]:
    """Median milliseconds per call of each runner, interleaved round by round so that load
    from other processes falls on every runtime alike."""
    for fn in runners.values():
        for _ in range(warmup):
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(iters):
        for name, fn in runners.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t) * 1e3) for name, t in times.items()}


def _torch(arch: str, image_size: int, num_classes: int, threads: int):
    import torch

    from resnet_jax.convert.torch_compat import import_torchvision

    model = getattr(import_torchvision().models, arch)(num_classes=num_classes).eval()
    model = model.to(memory_format=torch.channels_last)

    def run(x):
        torch.set_num_threads(threads)
        t = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
        with torch.inference_mode():
            return model(t.contiguous(memory_format=torch.channels_last)).numpy()

    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--tiny", action="store_true", help="resnet18 at 32 px, 1 iteration")
    parser.add_argument("--output-dir", default=str(RESULTS))
    args = parser.parse_args(argv)
    if args.tiny:
        args.model, args.image_size, args.warmup, args.iters = "resnet18", 32, 1, 1
        args.calibration_images = 4
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    preset = Preset("bench", resize=args.image_size, crop=args.image_size)
    predictor = random_predictor(args.model, preset)
    rng = np.random.default_rng(0)

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "calib").mkdir()
        calib = _calibration_folder(Path(tmp) / "calib", args.calibration_images)
        start = time.perf_counter()
        out = export_predictor(
            predictor, Path(tmp) / "exported", ("onnx", "litert", "litert_int8"), calibration=calib
        )
        export_seconds = time.perf_counter() - start
        checks = json.loads((out / "export.json").read_text())["checks"]
        num_classes = predictor.model.num_classes
        forward = jax.jit(predictor.model.apply)
        runners = {
            "jax": lambda x: np.asarray(forward(predictor.variables, x)),
            "onnxruntime": OnnxRunner(out / "model.onnx"),
            "litert_float32": LiteRTRunner(out / "model_float32.tflite"),
            "litert_int8": LiteRTRunner(out / "model_int8.tflite"),
            "torch_eager": _torch(args.model, args.image_size, num_classes, usable_cores()),
            # OpenMP's barriers suffer most when other processes share the cores.
            "torch_eager_1t": _torch(args.model, args.image_size, num_classes, 1),
        }
        ms = {row: {} for row in ROWS}
        for bs in sizes:
            x = rng.normal(size=(bs, args.image_size, args.image_size, 3)).astype(np.float32)
            for row, value in _time(runners, x, args.warmup, args.iters).items():
                ms[row][bs] = value
                print(f"{row:15s} batch {bs}: {value:8.1f} ms", flush=True)

    record = {
        "date": now_utc(),
        "command": " ".join(
            ["python -m benchmarks.export_bench", *(sys.argv[1:] if argv is None else argv)]
        ),
        "model": args.model,
        "image_size": args.image_size,
        "warmup": args.warmup,
        "iters": args.iters,
        "export_seconds": round(export_seconds, 1),
        "ms_per_batch": ms,
        "export_checks": checks,
        "hardware": hardware(),
        "versions": {
            **versions(),
            **{k: _version(k) for k in ("onnxruntime", "ai-edge-litert", "jax2onnx")},
        },
    }
    table = format_table(record, sizes)
    print(table)
    if not args.tiny or args.output_dir != str(RESULTS):
        stamp = record["date"].replace("-", "").replace(":", "")
        stem = write_record(args.output_dir, f"export-{stamp}", record, table)
        print(f"wrote {stem}.json and .md")
    return 0


def _version(name: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def format_table(record: dict, sizes: list[int]) -> str:
    hw = record["hardware"]
    head = (
        "| runtime | " + " | ".join(f"batch {b} (ms)" for b in sizes) + " | images/s at "
        f"batch {sizes[-1]} |"
    )
    lines = [
        f"{record['model']}, {record['image_size']} px, float32 input; {record['date']}, "
        f"{hw['cpu_model']}, {hw['usable_cores']} cores, shared with other work; median of "
        f"{record['iters']} interleaved rounds after {record['warmup']} warm-up.",
        "",
        head,
        "|" + "---|" * (len(sizes) + 2),
    ]
    for row in ROWS:
        cells = [f"{record['ms_per_batch'][row][b]:.1f}" for b in sizes]
        ips = sizes[-1] / record["ms_per_batch"][row][sizes[-1]] * 1e3
        lines.append(f"| {LABELS[row]} | " + " | ".join(cells) + f" | {ips:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
