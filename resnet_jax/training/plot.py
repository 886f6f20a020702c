"""Training and validation curves as a PNG, drawn from ``metrics.jsonl`` after a run."""

from __future__ import annotations

from typing import Any

from resnet_jax import storage
from resnet_jax.training.metrics import read_metrics

CURVES_PLOT_FILE = "curves.png"


def plot_curves(
    workdir: storage.PathLike, rows: list[dict[str, Any]] | None = None
) -> storage.epath.Path | None:
    """Writes ``workdir/curves.png`` (loss and top-1 vs step); returns its path."""
    rows = read_metrics(workdir) if rows is None else rows
    train = [r for r in rows if r.get("split") == "train"]
    evals = [r for r in rows if r.get("split") == "eval"]
    if not train and not evals:
        return None
    # A bare Figure renders with Agg without switching the global backend (notebooks keep theirs).
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for data, label, style in ((train, "train", "-"), (evals, "validation", "o-")):
        if not data:
            continue
        steps = [r["step"] for r in data]
        ax_loss.plot(steps, [r["loss"] for r in data], style, label=f"{label} loss", ms=3)
        ax_acc.plot(steps, [r["top1"] for r in data], style, label=f"{label} top-1", ms=3)
    if evals and "top5" in evals[0]:
        ax_acc.plot(
            [r["step"] for r in evals],
            [r["top5"] for r in evals],
            "s--",
            label="validation top-5",
            ms=3,
        )
    ax_loss.set(xlabel="step", ylabel="cross-entropy (train: with label smoothing)", title="Loss")
    ax_loss.set_yscale("log")
    ax_acc.set(xlabel="step", ylabel="accuracy", title="Accuracy", ylim=(0, 1.0))
    for ax, where in ((ax_loss, "upper right"), (ax_acc, "lower right")):
        ax.grid(alpha=0.3)
        ax.legend(loc=where)
    if evals:
        best = max(evals, key=lambda r: r["top1"])
        fig.suptitle(f"final validation top-1 {evals[-1]['top1']:.4f} (best {best['top1']:.4f})")
    fig.tight_layout()
    return storage.save_figure(fig, storage.path(workdir) / CURVES_PLOT_FILE)
