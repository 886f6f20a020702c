"""Restart without recompiling: the train step's compile time on a first and a second start.

Each start is a fresh Python process that builds the training system's real train step
(``benchmarks.jax_bench``: ``steps.compile_train_step`` over one device) with JAX's persistent
compilation cache pointed at one directory (``resnet_jax.training.compile_cache``), as
``train.py`` does. The first start compiles and stores; the second loads. Writes
``benchmarks/results/compile-cache-<platform>-<time>.{json,md}``.

    python -m benchmarks.compile_cache                        # ResNet-50, bf16, batch 8, 224 px
    python -m benchmarks.compile_cache --model resnet18 --image-size 32 --batch-size 2  # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from benchmarks.common import hardware, now_utc, versions, write_record

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MARK = "COMPILE_CACHE_RESULT "


def _child(args: argparse.Namespace) -> None:
    """One start: enable the cache, build and compile the step, print the timings."""
    import jax

    from benchmarks.jax_bench import JaxConfig, _compile_train
    from resnet_jax.training import compile_cache

    hits: list[str] = []
    jax.monitoring.register_event_listener(
        lambda event, **kw: hits.append(event) if "cache_hits" in event else None
    )
    compile_cache.enable(args.cache_dir)
    cfg = JaxConfig(
        model=args.model,
        precision=args.precision,
        batch_size=args.batch_size,
        image_size=args.image_size,
        num_classes=args.num_classes,
    )
    info = _compile_train(cfg).info
    row = {
        "lower_seconds": info["lower_seconds"],
        "compile_seconds": info["compile_seconds"],
        "persistent_cache_hits": len(hits),
        "platform": jax.devices()[0].platform,
        "device_kind": jax.devices()[0].device_kind,
    }
    print(MARK + json.dumps(row), flush=True)


def _start(args: argparse.Namespace, cache_dir: str) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "benchmarks.compile_cache", "--child", f"--cache-dir={cache_dir}",
        f"--model={args.model}", f"--precision={args.precision}",
        f"--batch-size={args.batch_size}", f"--image-size={args.image_size}",
        f"--num-classes={args.num_classes}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    raise RuntimeError(f"The start failed (exit {done.returncode}):\n{done.stderr[-3000:]}")


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Two starts on one fresh cache directory; the ratio of their compile times."""
    with tempfile.TemporaryDirectory(prefix="jax-cache-") as cache_dir:
        first = _start(args, cache_dir)
        second = _start(args, cache_dir)
    return {
        "date": now_utc(),
        "command": "python -m benchmarks.compile_cache " + " ".join(args.argv),
        "model": args.model,
        "precision": args.precision,
        "batch_size": args.batch_size,
        "image_size": args.image_size,
        "first": first,
        "second": second,
        "compile_ratio": second["compile_seconds"] / first["compile_seconds"],
        "lower_plus_compile_ratio": (second["lower_seconds"] + second["compile_seconds"])
        / (first["lower_seconds"] + first["compile_seconds"]),
        "hardware": hardware(),
        "versions": versions(),
    }


def markdown(result: dict[str, Any]) -> str:
    first, second = result["first"], result["second"]
    lines = [
        f"Compile time of the {result['model']} {result['precision']} train step, batch "
        f"{result['batch_size']} at {result['image_size']} px, {first['device_kind']} "
        f"({result['date']}); `{result['command']}`",
        "",
        "| start | trace + lower (s) | compile (s) | persistent-cache hits |",
        "|---|---|---|---|",
    ]
    for name, row in (("first (empty cache)", first), ("second (same cache)", second)):
        lines.append(
            f"| {name} | {row['lower_seconds']:.2f} | {row['compile_seconds']:.2f} | "
            f"{row['persistent_cache_hits']} |"
        )
    lines += [
        "",
        f"compile second/first: **{result['compile_ratio']:.3f}**; trace + lower + compile: "
        f"{result['lower_plus_compile_ratio']:.3f}",
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--precision", default="bf16", choices=("bf16", "fp32"))
    parser.add_argument("--batch-size", type=int, default=8, help="per device")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--out", default=RESULTS, help="folder for the results files")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any] | None:
    args = parse_args(argv)
    if args.child:
        _child(args)
        return None
    result = measure(args)
    text = markdown(result)
    print(text)
    platform = result["first"]["platform"]
    stem = write_record(
        args.out, f"compile-cache-{platform}-{result['date'].replace(':', '')}", result, text
    )
    print(f"wrote {stem}.json and .md")
    return result


if __name__ == "__main__":
    main()
