"""Block-by-block comparison of the Flax model with a reference framework.

Per row (stem, each block, pooled features, logits): max|Flax - reference| and that over
max|reference|, the relative difference the tolerance applies to, logits included: float32
rounding grows with the largest values a tensor holds (logits of trained weights reach tens,
a scaled head hundreds), so an absolute bound would fail correct conversions of large-logit
models. Top-1/top-5 agreement is reported alongside.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np

from resnet_jax.convert.common import Variables, parse_block
from resnet_jax.convert.reference import Activations


@functools.lru_cache(maxsize=8)
def _features_fn(model: nn.Module):
    """One jitted function per architecture, so repeated comparisons compile once per shape."""

    def is_block(module: nn.Module, method: str) -> bool:
        return method == "__call__" and parse_block(module.name or "") is not None

    def forward(variables, x):
        features, state = model.apply(
            variables,
            x,
            return_features=True,
            capture_intermediates=is_block,
            mutable=["intermediates"],
        )
        blocks = {name: v["__call__"][0] for name, v in state["intermediates"].items()}
        return features, blocks

    return jax.jit(forward)


def flax_activations(model: nn.Module, variables: Variables, x: np.ndarray) -> Activations:
    """The Flax model's stem, block, pooled and logit outputs, float32, 'highest' precision."""
    with jax.default_matmul_precision("highest"):
        features, blocks = _features_fn(model)(variables, np.asarray(x, np.float32))
    acts = {"stem": features["stem"]}
    acts.update({name: blocks[name] for name in sorted(blocks, key=parse_block)})
    if model.variant == "v2":
        acts["post_bn"] = features[f"layer{len(model.stage_sizes)}"]
    acts["pooled"], acts["logits"] = features["pooled"], features["logits"]
    return {k: np.asarray(v) for k, v in acts.items()}


def _relative(max_abs: float, scale: float) -> float:
    return max_abs / max(scale, np.finfo(np.float32).tiny)


def relative_difference(ours: np.ndarray, theirs: np.ndarray) -> float:
    """max|ours - theirs| / max|theirs|: the difference relative to the reference's scale."""
    theirs = np.asarray(theirs)
    return float(_relative(np.abs(np.asarray(ours) - theirs).max(), np.abs(theirs).max()))


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # 'stem', 'layer1_0', 'post_bn', 'pooled', 'logits'
    shape: tuple[int, ...]
    max_abs: float
    ref_scale: float  # max|reference|

    @property
    def rel(self) -> float:
        return _relative(self.max_abs, self.ref_scale)

    @property
    def stage_block(self) -> tuple[str, str]:
        parsed = parse_block(self.name)
        return (f"layer{parsed[0]}", str(parsed[1])) if parsed else (self.name, "-")


@dataclasses.dataclass(frozen=True)
class Comparison:
    title: str
    rows: list[Row]
    top1: list[bool]  # per input: same arg-max class
    top5: list[bool]  # per input: same set of five highest classes
    labels: list[str]  # per input: 'random 0', 'china.jpg', ...
    tolerance: float
    image_size: int

    def summary(self) -> dict:
        """The numbers worth keeping with a converted checkpoint (JSON values)."""
        blocks = [r for r in self.rows if r.name != "logits"]
        return {
            "passed": self.passed,
            "image_size": self.image_size,
            "tolerance": self.tolerance,
            "tolerance_kind": "relative: max|diff| / max|reference| per row",
            "logits_max_abs": self.logits.max_abs,
            "logits_rel": self.logits.rel,
            "max_block_abs": max(r.max_abs for r in blocks),
            "max_block_rel": max(r.rel for r in blocks),
            "top1_agreement": f"{sum(self.top1)}/{len(self.labels)}",
            "top5_agreement": f"{sum(self.top5)}/{len(self.labels)}",
            "inputs": list(self.labels),
        }

    @property
    def logits(self) -> Row:
        return next(r for r in self.rows if r.name == "logits")

    @property
    def logits_max_abs(self) -> float:
        return self.logits.max_abs

    @property
    def failures(self) -> list[str]:
        """Rows whose max|diff|/max|ref| is over the tolerance (or not a number)."""
        return [r.name for r in self.rows if not r.rel <= self.tolerance]

    @property
    def passed(self) -> bool:
        return not self.failures

    def format(self) -> str:
        lines = [self.title, ""]
        header = (
            f"{'stage':<8}{'block':>5}  {'shape':<22}{'max|diff|':>11}{'max|ref|':>11}{'rel':>11}"
        )
        lines += [header, "-" * len(header)]
        for r in self.rows:
            stage, block = r.stage_block
            flag = "" if r.rel <= self.tolerance else "  <-- over"
            lines.append(
                f"{stage:<8}{block:>5}  {str(r.shape):<22}{r.max_abs:>11.3e}{r.ref_scale:>11.3e}"
                f"{r.rel:>11.3e}{flag}"
            )
        n = len(self.labels)
        blocks = [r for r in self.rows if r.name != "logits"]
        lines += [
            "",
            f"logits max|diff|: {self.logits.max_abs:.3e} absolute, {self.logits.rel:.3e} "
            f"relative (max|ref| {self.logits.ref_scale:.3e})",
            f"stem, blocks, pooled: largest max|diff| {max(r.max_abs for r in blocks):.3e} "
            f"absolute, largest {max(r.rel for r in blocks):.3e} relative",
            f"top-1 agreement: {sum(self.top1)}/{n}   top-5 agreement (same set): "
            f"{sum(self.top5)}/{n}",
            "inputs: " + ", ".join(self.labels),
            f"tolerance: every row, logits included, max|diff|/max|ref| <= {self.tolerance:.0e}",
        ]
        if self.passed:
            lines.append("PASS")
        else:
            lines.append(f"FAIL: over tolerance: {', '.join(self.failures)}")
        return "\n".join(lines)


def compare(
    flax_acts: Activations,
    ref_acts: Activations,
    labels: list[str],
    tolerance: float = 1e-4,
    title: str = "",
    image_size: int = 0,
) -> Comparison:
    """Rows in the model's order; a missing or mis-shaped activation is an error, not a row."""
    if set(flax_acts) != set(ref_acts):
        raise ValueError(
            f"Activations differ in names: Flax only {sorted(set(flax_acts) - set(ref_acts))}, "
            f"reference only {sorted(set(ref_acts) - set(flax_acts))}."
        )
    rows = []
    for name, ours in flax_acts.items():
        ref = ref_acts[name]
        if ours.shape != ref.shape:
            raise ValueError(f"{name}: Flax output {ours.shape} vs reference {ref.shape}.")
        diff = np.abs(ours.astype(np.float64) - ref.astype(np.float64))
        rows.append(Row(name, ours.shape, float(diff.max()), float(np.abs(ref).max())))
    ours, ref = flax_acts["logits"], ref_acts["logits"]
    top5_ours, top5_ref = np.argsort(-ours, -1)[:, :5], np.argsort(-ref, -1)[:, :5]
    return Comparison(
        title=title,
        rows=rows,
        top1=list(np.argmax(ours, -1) == np.argmax(ref, -1)),
        top5=[set(a) == set(b) for a, b in zip(top5_ours, top5_ref, strict=True)],
        labels=labels,
        tolerance=tolerance,
        image_size=image_size,
    )
