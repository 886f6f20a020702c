"""The confusion matrix of the final evaluation: counts[true class, predicted class] over the
eval split, written as ``confusion_matrix.json`` and ``confusion_matrix.png`` in the workdir."""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from resnet_jax import storage
from resnet_jax.data import presets
from resnet_jax.training import steps
from resnet_jax.training.evaluate import eval_sums
from resnet_jax.training.state import TrainState
from resnet_jax.training.steps import AxisNames

CONFUSION_PLOT_FILE = "confusion_matrix.png"
JSON_FILE = "confusion_matrix.json"


def confusion_step(
    state: TrainState,
    batch: dict[str, jax.Array],
    *,
    model: nn.Module,
    axis_name: AxisNames,
    num_classes: int,
    preset: presets.Preset | None = None,
) -> jax.Array:
    """(num_classes, num_classes) int32 counts of (label, top-1 prediction) over real examples."""
    images = steps.model_inputs(batch["image"], preset)
    logits = model.apply(state.variables, images, train=False).astype(jnp.float32)
    predicted = lax.top_k(logits, 1)[1][:, 0]  # Ties broken as the eval step's top-1.
    counts = jnp.zeros((num_classes, num_classes), jnp.int32)
    counts = counts.at[batch["label"], predicted].add(batch["mask"].astype(jnp.int32))
    return lax.psum(counts, axis_name)


def plot_confusion_matrix(
    counts: np.ndarray,
    class_names: Sequence[str] | None,
    path: storage.PathLike,
    title: str = "",
) -> storage.epath.Path:
    """Counts as a heat map coloured by row (the fraction of each true class); returns ``path``."""
    # A bare Figure renders with Agg without switching the global backend (notebooks keep theirs).
    from matplotlib.figure import Figure

    n = counts.shape[0]
    names = list(class_names) if class_names else [str(i) for i in range(n)]
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = min(max(4.0, 0.45 * n + 2.0), 24.0)
    fig = Figure(figsize=(side + 1.0, side))
    ax = fig.subplots()
    image = ax.imshow(rows, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(n)
    ax.set_xticks(ticks, names, rotation=90 if n > 10 else 0, fontsize=8 if n > 20 else 10)
    ax.set_yticks(ticks, names, fontsize=8 if n > 20 else 10)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= 30:
        for i, j in zip(*np.nonzero(counts), strict=True):
            color = "white" if rows[i, j] > 0.5 else "black"
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", color=color, fontsize=7)
    fig.tight_layout()
    return storage.save_figure(fig, path)


def write_final(run: Any, result: dict[str, Any]) -> dict[str, Any] | None:
    """After a finished run with evaluation, for datasets of at most
    ``config.confusion_matrix_max_classes`` classes: the matrix of the final state, its top-1
    (printed and logged as split 'final'), JSON and PNG. None when not applicable.
    ``run`` is the loop's record of the run: its spec, built model, workdir and writers.
    The counts are summed as the evaluation sums its metrics (``evaluate.eval_sums``)."""
    spec, parallel = run.spec, run.parallel
    limit = spec.config.confusion_matrix_max_classes
    finished = result["step"] >= spec.total_steps  # Not after a preemption.
    if spec.config.eval_every_steps < 0 or not finished or not 0 < spec.num_classes <= limit:
        return None
    step_fn = functools.partial(
        confusion_step,
        model=run.built.model,
        axis_name=parallel.axis_name,
        num_classes=spec.num_classes,
        preset=run.built.preset,
    )
    compiled = parallel.compile(step_fn, donate_state=False)
    counts = np.asarray(
        eval_sums(spec, compiled, result["state"], parallel, cache_dir=run.workdir), np.int64
    )
    count = int(counts.sum())
    top1 = float(np.trace(counts)) / max(count, 1)
    names = list(spec.class_names) if spec.class_names else None
    out = {"step": result["step"], "top1": top1, "count": count, "class_names": names}
    if jax.process_index() == 0:
        workdir = storage.path(run.workdir)
        (workdir / JSON_FILE).write_text(json.dumps({**out, "counts": counts.tolist()}))
        title = f"step {result['step']}: top-1 {top1:.4f} on {count} eval images"
        path = plot_confusion_matrix(counts, names, workdir / CONFUSION_PLOT_FILE, title)
        run.writer.write("final", result["step"], {"top1": top1, "count": count})
        run.progress.message(f"Final top-1 {top1:.4f} on {count} eval images. Confusion: {path}")
    return {**out, "counts": counts}
