"""Block-by-block comparison of the Flax model with a reference framework.

Per row (stem, each block, pooled features, logits): max|Flax - reference| and that over
max|reference|, the relative difference the tolerance applies to. Logits are judged by
their max absolute difference; top-1/top-5 agreement is reported alongside.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np

from resnet_jax import platform
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

    return platform.jit(forward)


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


@dataclasses.dataclass(frozen=True)
class Row:
    name: str  # 'stem', 'layer1_0', 'post_bn', 'pooled', 'logits'
    shape: tuple[int, ...]
    max_abs: float
    ref_scale: float  # max|reference|

    @property
    def rel(self) -> float:
        return self.max_abs / max(self.ref_scale, np.finfo(np.float32).tiny)

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
        return {
            "passed": self.passed,
            "image_size": self.image_size,
            "tolerance": self.tolerance,
            "logits_max_abs": self.logits_max_abs,
            "max_block_rel": max(r.rel for r in self.rows if r.name != "logits"),
            "top1_agreement": f"{sum(self.top1)}/{len(self.labels)}",
            "top5_agreement": f"{sum(self.top5)}/{len(self.labels)}",
            "inputs": list(self.labels),
        }

    @property
    def logits_max_abs(self) -> float:
        return next(r.max_abs for r in self.rows if r.name == "logits")

    @property
    def failures(self) -> list[str]:
        """Rows over the tolerance: blocks by relative difference, logits by absolute."""
        bad = [r.name for r in self.rows if r.name != "logits" and not r.rel <= self.tolerance]
        if not self.logits_max_abs <= self.tolerance:
            bad.append("logits")
        return bad

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
            flag = "" if r.name == "logits" or r.rel <= self.tolerance else "  <-- over"
            lines.append(
                f"{stage:<8}{block:>5}  {str(r.shape):<22}{r.max_abs:>11.3e}{r.ref_scale:>11.3e}"
                f"{r.rel:>11.3e}{flag}"
            )
        n = len(self.labels)
        lines += [
            "",
            f"logits max|diff|: {self.logits_max_abs:.3e} "
            f"(tolerance {self.tolerance:.0e} absolute)",
            f"top-1 agreement: {sum(self.top1)}/{n}   top-5 agreement (same set): "
            f"{sum(self.top5)}/{n}",
            "inputs: " + ", ".join(self.labels),
            f"tolerance: every row max|diff|/max|ref| <= {self.tolerance:.0e}, "
            f"logits max|diff| <= {self.tolerance:.0e}",
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
