"""Runs the README's quickstart command as written and checks what it left in its workdir.

    python .ci/quickstart_check.py --run          # run README's command, then check
    python .ci/quickstart_check.py --workdir=DIR  # only check an existing run

Fails (exit 1) when the final validation top-1 is below --min_top1 (0.97) or when the
checkpoint, metrics, TensorBoard events, config or curves are missing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMAND = re.compile(
    r"^\s*(?:\$\s*)?((?:pip3? install [^&]*&&\s*)?python3? train\.py "
    r"--config=configs/quickstart\.py.*?)\s*$"
)


def readme_command(readme: str) -> str:
    """The first README line that runs train.py with the quickstart config (with its
    ``pip install ... &&`` prefix, if any)."""
    with open(readme) as f:
        for line in f:
            match = COMMAND.match(line)
            if match:
                return match.group(1)
    raise SystemExit(
        f"{readme} has no line '[pip install ... &&] python train.py "
        "--config=configs/quickstart.py ...'."
    )


def workdir_of(command: str) -> str:
    """--workdir of the command, or train.py's default workdir/quickstart."""
    for arg in shlex.split(command.split("&&")[-1]):
        if arg.startswith("--workdir="):
            return os.path.join(REPO, os.path.expanduser(arg.split("=", 1)[1]))
    return os.path.join(REPO, "workdir", "quickstart")


def check(workdir: str, min_top1: float) -> list[str]:
    """Problems with the run in ``workdir``; empty when it passed."""
    problems = []
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return [f"{path} does not exist."]
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    if not train or not evals:
        problems.append(f"{path} has {len(train)} train and {len(evals)} eval rows.")
    else:
        final = evals[-1]
        print(
            f"final validation top-1 {final['top1']:.4f} (top-5 {final['top5']:.4f}, "
            f"{int(final['count'])} images) at step {final['step']}; last train step "
            f"{train[-1]['step']}"
        )
        if final["step"] < train[-1]["step"]:
            problems.append("The last evaluation precedes the last training step.")
        if final["top1"] < min_top1:
            problems.append(f"Final validation top-1 {final['top1']:.4f} < {min_top1}.")
    for name in ("config.json", "curves.png", "checkpoints", "tensorboard"):
        target = os.path.join(workdir, name)
        if not os.path.exists(target) or (os.path.isdir(target) and not os.listdir(target)):
            problems.append(f"{target} is missing or empty.")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run the README's command first")
    parser.add_argument("--readme", default=os.path.join(REPO, "README.md"))
    parser.add_argument("--workdir", help="check this workdir (default: the command's)")
    parser.add_argument("--min_top1", type=float, default=0.97)
    args = parser.parse_args()

    workdir = args.workdir
    if args.run:
        command = readme_command(args.readme)
        workdir = workdir or workdir_of(command)
        if os.path.exists(workdir):  # A fresh machine has no previous run to resume.
            shutil.rmtree(workdir)
        print(f"$ {command}", flush=True)
        start = time.time()
        proc = subprocess.run(["bash", "-c", command], cwd=REPO)
        print(f"quickstart took {time.time() - start:.0f} s (exit code {proc.returncode})")
        if proc.returncode:
            return proc.returncode
    if workdir is None:
        parser.error("give --run or --workdir")
    problems = check(workdir, args.min_top1)
    for p in problems:
        print(f"FAIL: {p}", file=sys.stderr)
    if not problems:
        print(f"quickstart OK: {workdir}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
