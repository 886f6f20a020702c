"""Binary cross-entropy on (mixed) targets, as timm's BinaryCrossEntropy in the RSB recipes.

"ResNet strikes back" (Wightman et al. 2021) trains with one sigmoid per class on the Mixup/CutMix
targets, binarised above a threshold (0.2 in A1-A3). Per-example losses, so the train step
takes the batch mean as it does for softmax cross-entropy (optim.cross_entropy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from resnet_jax.training.mixup import smooth_one_hot


def binary_cross_entropy(
    logits: jax.Array,
    targets: jax.Array,
    *,
    smoothing: float = 0.0,
    target_threshold: float | None = None,
    sum_classes: bool = False,
) -> jax.Array:
    """Per-example BCE with logits in float32: the mean over classes (timm's 'mean' reduction,
    once averaged over the batch) or their sum (``sum_classes``, timm's --bce-sum).

    targets: class indices [B] (one-hot with ``smoothing`` as timm: smoothing / C off the label)
    or dense soft targets [B, C] (Mixup/CutMix output; smoothed upstream). ``target_threshold``
    turns targets above it into 1, the rest into 0.
    """
    logits = logits.astype(jnp.float32)
    if targets.shape != logits.shape:
        targets = smooth_one_hot(targets, logits.shape[-1], smoothing)
    targets = targets.astype(jnp.float32)
    if target_threshold is not None:
        targets = (targets > target_threshold).astype(jnp.float32)
    # timm's (PyTorch's) stable form: max(x, 0) - x t + log(1 + exp(-|x|)).
    loss = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return loss.sum(-1) if sum_classes else loss.mean(-1)
