"""Data-parallel scaling of the real train step at a fixed per-device batch.

On a CPU host, devices are simulated: each device count runs in its own process with
``XLA_FLAGS=--xla_force_host_platform_device_count=N``. All simulated devices share the same
cores, so this measures the overhead of the collectives and of the partitioned program, not
a speedup. On a host with several accelerators the subsets ``jax.devices()[:N]`` are used in
this process. Efficiency is (images/s with N devices) / (N x images/s with one).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
_MARK = "SCALING_RESULT "


def _efficiency(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    base = next((r for r in rows if r["devices"] == 1 and r.get("images_per_sec")), None)
    for r in rows:
        ips = r.get("images_per_sec")
        r["efficiency"] = ips / (r["devices"] * base["images_per_sec"]) if base and ips else None
    return rows


def _measure_in_process(cfg: Any, *, windows: int, steps: int, warmup: int) -> dict[str, Any]:
    from benchmarks.common import interleave
    from benchmarks.jax_bench import JaxTrainRunner

    label = f"jax_{cfg.num_devices}dev"
    timed = interleave(
        [JaxTrainRunner(cfg, label=label, warmup=warmup)], windows=windows, steps=steps
    )[label]
    out = timed.as_dict()
    return {
        "devices": cfg.num_devices,
        "images_per_sec": out["images_per_sec"],
        "step_seconds": out["step_seconds"],
        "global_batch": cfg.batch_size * cfg.num_devices,
        "compile_seconds": out["compile_seconds"],
        "all_reduce_ops": out["all_reduce_ops"],
    }


def measure_real_devices(
    cfg: Any, counts: Sequence[int], *, windows: int, steps: int, warmup: int
) -> list[dict[str, Any]]:
    """Scaling over subsets of this host's accelerators, in this process."""
    rows = [
        _measure_in_process(
            dataclasses.replace(cfg, num_devices=n), windows=windows, steps=steps, warmup=warmup
        )
        for n in counts
    ]
    return _efficiency(rows)


def measure_simulated(
    cfg: Any,
    counts: Sequence[int],
    *,
    windows: int,
    steps: int,
    warmup: int,
    timeout: float = 1800,
    log: Any = None,
) -> list[dict[str, Any]]:
    """Scaling over N simulated CPU devices, one subprocess per N."""
    rows = []
    for n in counts:
        env = dict(os.environ)
        flags = [f for f in env.get("XLA_FLAGS", "").split() if "device_count" not in f]
        env["XLA_FLAGS"] = " ".join([*flags, f"--xla_force_host_platform_device_count={n}"])
        env["JAX_PLATFORMS"] = "cpu"
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p
        )
        spec = json.dumps({**dataclasses.asdict(cfg), "num_devices": n})
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.scaling",
            "--config",
            spec,
            "--windows",
            str(windows),
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
        ]
        proc = subprocess.run(
            cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_MARK)]
        if proc.returncode or not lines:
            tail = (proc.stderr or proc.stdout)[-2000:]
            raise RuntimeError(f"Scaling run with {n} simulated devices failed:\n{tail}")
        row = json.loads(lines[-1][len(_MARK) :])
        if log:
            log(f"  {n} simulated device(s): {row['images_per_sec']:.1f} img/s")
        rows.append(row)
    return _efficiency(rows)


def main(argv: Sequence[str] | None = None) -> None:
    """Child process: one device count, prints one result line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="JaxConfig fields as JSON")
    parser.add_argument("--windows", type=int, default=3)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    from benchmarks.jax_bench import JaxConfig

    fields = json.loads(args.config)
    fields["model_kwargs"] = tuple(
        (k, tuple(v) if isinstance(v, list) else v) for k, v in fields.get("model_kwargs", ())
    )
    cfg = JaxConfig(**fields)
    row = _measure_in_process(cfg, windows=args.windows, steps=args.steps, warmup=args.warmup)
    print(_MARK + json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
