"""Writes a run's results: the full JSON record and a markdown summary next to it.

Runs recorded in parts (say, one precision at a time on a shared machine) merge into one
record: ``python -m benchmarks.report --merge a.json b.json --out benchmarks/results``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
from collections.abc import Sequence
from typing import Any

from benchmarks.common import write_record

FRAMEWORK_NAMES = {
    "jax": "resnet-jax",
    "jax_v1": "resnet-jax (resnet50_v1)",
    "jax_cpu_fast": "resnet-jax (backend cpu_fast)",
    "jax_space_to_depth": "resnet-jax (space-to-depth stem)",
    "torch": "PyTorch eager",
    "torch_compile": "PyTorch compile",
    "keras": "Keras (JAX)",
}
TASKS = ("train", "inference")


def result_stem(results: dict[str, Any]) -> str:
    """File name stem: suite, device kind and UTC time, e.g. ``cpu-cpu-20250101T120000Z``;
    merged records end in ``-combined``."""
    kind = re.sub(r"[^a-z0-9]+", "-", results["hardware"]["device_kind"].lower()).strip("-")
    stamp = results["date"].replace("-", "").replace(":", "")
    merged = "-combined" if results.get("runs") else ""
    return f"{results['suite']}-{kind}-{stamp}{merged}"


def write_results(results: dict[str, Any], out_dir: str) -> tuple[str, str]:
    """Writes ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns both paths."""
    stem = write_record(out_dir, result_stem(results), results, markdown(results))
    return stem + ".json", stem + ".md"


def _num(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _mib(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 2**20:,.0f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _run_summary(run: dict[str, Any]) -> dict[str, Any]:
    keys = ("date", "command", "parts", "load_average_start", "load_average_end", "wall_seconds")
    return {k: run.get(k) if k != "parts" else run["settings"].get("parts") for k in keys}


def merge(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One record from runs of the same suite and machine recorded separately."""
    if not records:
        raise ValueError("Nothing to merge.")
    kinds = {r["hardware"]["device_kind"] for r in records}
    if len({r["suite"] for r in records}) > 1 or len(kinds) > 1:
        raise ValueError(f"Runs of different suites or devices cannot be merged: {kinds}.")
    out = copy.deepcopy(records[0])
    out["runs"] = [_run_summary(r) for r in records]
    for r in records[1:]:
        for key in ("compare", "ratios"):
            for task, by_precision in r.get(key, {}).items():
                out.setdefault(key, {}).setdefault(task, {}).update(by_precision)
        for key in ("fast", "input_pipeline", "scaling"):
            if r.get(key):
                out[key] = r[key]
        out["targets"] = out.get("targets", []) + r.get("targets", [])
        out["notes"] = out.get("notes", []) + [
            n for n in r.get("notes", []) if n not in out.get("notes", [])
        ]
        out["settings"]["precisions"] = sorted(
            set(out["settings"]["precisions"]) | set(r["settings"]["precisions"])
        )
        out["settings"]["parts"] = sorted(
            set(out["settings"]["parts"]) | set(r["settings"]["parts"])
        )
    out["date"] = min(r["date"] for r in records)
    out["wall_seconds"] = sum(r.get("wall_seconds", 0.0) for r in records)
    for key in ("command", "load_average_start", "load_average_end"):
        out.pop(key, None)
    return out


def markdown(results: dict[str, Any]) -> str:
    """The human-readable summary of a results record."""
    hw, ver, st = results["hardware"], results["versions"], results["settings"]
    runs = results.get("runs") or [_run_summary(results)]
    out = [
        f"# ResNet benchmarks: suite `{results['suite']}`, {results['date']}\n",
        f"- Hardware: {hw['cpu_model']}, {hw['cpu_cores']} cores ({hw['usable_cores']} usable), "
        f"{hw['memory_gb']} GB RAM; JAX devices: {hw['device_count']} x {hw['device_kind']} "
        f"({hw['platform']})",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in ver.items() if v),
        f"- Settings: {st['model']} at {st['image_size']}x{st['image_size']}, batch "
        f"{st['batch_size']}, median of {st['windows']} windows of {st['steps']} step(s) after "
        f"{st['warmup']} warmup step(s), windows interleaved across frameworks",
    ]
    if "xla_compiler_options" in st:
        out.append(f"- resnet-jax XLA compiler options: {st['xla_compiler_options'] or 'none'}")
    for run in runs:
        wall = run.get("wall_seconds")
        out.append(
            f"- Run {run['date']} ({', '.join(run.get('parts') or [])}; "
            f"{_num(wall / 60 if wall else None)} min): `{run.get('command', '')}`; load average "
            f"(1/5/15 min) {run.get('load_average_start')} at start, "
            f"{run.get('load_average_end')} at end"
        )
    out.append("")
    for note in results.get("notes", []):
        out.append(f"> {note}\n")
    compare = results.get("compare")
    if compare:
        out.append(_compare_section(compare, results.get("ratios", {})))
        out.append(_details_section(compare))
    if results.get("fast"):
        out.append(_fast_section(results["fast"]))
    if results.get("input_pipeline"):
        out.append(_input_section(results["input_pipeline"]))
    if results.get("scaling"):
        out.append(_scaling_section(results["scaling"]))
    if results.get("targets"):
        out.append("## Targets\n")
        rows = [
            [t["name"], _num(t.get("value"), 2), str(t.get("goal")), str(t.get("met"))]
            for t in results["targets"]
        ]
        out.append(_table(["target", "measured", "goal", "met"], rows))
    return "\n".join(out)


def _frameworks(compare: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    for task in compare.values():
        for by_fw in task.values():
            seen += [fw for fw in by_fw if fw not in seen]
    return seen


def _compare_section(compare: dict[str, Any], ratios: dict[str, Any]) -> str:
    fws = _frameworks(compare)
    ratio_keys: list[str] = []
    for task in ratios.values():
        for by in task.values():
            ratio_keys += [k for k in by if k not in ratio_keys]
    header = ["task", "precision"] + [f"{FRAMEWORK_NAMES.get(f, f)} img/s" for f in fws]
    header += ratio_keys
    rows = []
    for task in TASKS:
        for precision, by_fw in compare.get(task, {}).items():
            row = [task, precision]
            row += [_num(by_fw[f]["images_per_sec"]) if f in by_fw else "-" for f in fws]
            r = ratios.get(task, {}).get(precision, {})
            row += [_num(r.get(k), 2) if k in r else "-" for k in ratio_keys]
            rows.append(row)
    return "## Side by side\n\n" + _table(header, rows)


def _details_section(compare: dict[str, Any]) -> str:
    header = [
        "framework",
        "task",
        "precision",
        "img/s",
        "step ms",
        "compile s",
        "GFLOP/img",
        "MFU",
        "XLA memory MiB",
        "device peak MiB",
    ]
    rows = []
    for task in TASKS:
        for precision, by_fw in compare.get(task, {}).items():
            for fw, r in by_fw.items():
                mem = (r.get("compiled_memory") or {}).get("total_bytes")
                flops = r.get("flops_per_image")
                rows.append(
                    [
                        FRAMEWORK_NAMES.get(fw, fw),
                        task,
                        precision,
                        _num(r["images_per_sec"]),
                        _num(1000 * r["step_seconds"]),
                        _num(r.get("compile_seconds")),
                        _num(flops / 1e9 if flops else None, 2),
                        _pct(r.get("mfu")),
                        _mib(mem),
                        _mib(r.get("device_peak_bytes")),
                    ]
                )
    return "## Details\n\n" + _table(header, rows)


def _fast_section(fast: dict[str, Any]) -> str:
    base = fast["variants"].get("baseline", {}).get("images_per_sec")
    rows = []
    for name, r in fast["variants"].items():
        mem = (r.get("compiled_memory") or {}).get("total_bytes")
        ips = r["images_per_sec"]
        rows.append(
            [
                name,
                fast["descriptions"].get(name, ""),
                _num(ips),
                _num(ips / base, 2) if base else "n/a",
                _mib(mem),
            ]
        )
    title = (
        f"## Make it fast: resnet-jax train step, batch {fast['batch_size']} at "
        f"{fast['image_size']}, {fast['base_precision']}\n\n"
    )
    return title + _table(["variant", "what", "img/s", "vs baseline", "XLA memory MiB"], rows)


def _input_section(inp: dict[str, Any]) -> str:
    rows = [
        [
            f"defaults, {inp['cores_used']} cores",
            _num(inp["images_per_sec"]),
            _num(inp["images_per_sec_per_core"]),
        ],
        [
            "one map thread, one-thread pool",
            _num(inp["one_thread_images_per_sec"]),
            _num(inp["one_thread_images_per_sec"]),
        ],
    ]
    title = (
        f"## Input pipeline (JPEG {inp['jpeg_size']}, ~{inp['mean_jpeg_kb']} KB -> Inception "
        f"crop {inp['image_size']}, flip, normalise; batch {inp['batch_size']})\n\n"
    )
    cores = inp.get("cores_to_feed_5000_images_per_sec")
    note = f"\nHost cores needed to feed 5,000 images/s at this rate: {_num(cores)}.\n"
    return title + _table(["setting", "img/s", "img/s per core"], rows) + note


def _scaling_section(scaling: dict[str, Any]) -> str:
    rows = [
        [
            str(r["devices"]),
            str(r["global_batch"]),
            _num(r["images_per_sec"]),
            _pct(r.get("efficiency")),
            str(r.get("all_reduce_ops")),
        ]
        for r in scaling["rows"]
    ]
    title = (
        f"## Scaling ({scaling['kind']} devices, per-device batch {scaling['per_device_batch']} "
        f"at {scaling['image_size']}, {scaling['precision']})\n\n"
    )
    note = f"{scaling['note']}\n\n" if scaling.get("note") else ""
    return (
        title
        + note
        + _table(["devices", "global batch", "img/s", "efficiency", "all-reduce ops"], rows)
    )


def main(argv: Sequence[str] | None = None) -> None:
    """Merges recorded runs into one JSON record and markdown table."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__)
    parser.add_argument("--merge", nargs="+", required=True, help="results JSON files")
    parser.add_argument("--out", default=os.path.join("benchmarks", "results"))
    args = parser.parse_args(argv)
    records = []
    for path in args.merge:
        with open(path) as f:
            records.append(json.load(f))
    paths = write_results(merge(records), args.out)
    print(f"wrote {paths[0]} and {paths[1]}")


if __name__ == "__main__":
    main()
