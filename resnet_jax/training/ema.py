"""Weight EMA: a moving average of the parameters and BN statistics, kept in the train state.

The decay follows timm's ``ModelEmaV3`` (RSB's utils/model_ema.py): the first update copies the
weights (decay 0); with ``warmup_power`` > 0 the decay after ``t`` further updates is
``1 - (1 + t) ** -warmup_power``, capped at ``decay`` (@crowsonkb's warmup, so short runs average
over what they trained); with 0 it is ``decay`` from the second update on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

DecaySchedule = Callable[[jax.Array], jax.Array]


def decay_schedule(decay: float, warmup_power: float) -> DecaySchedule:
    """``step -> decay`` of the update that makes the ``step``-th (1-based) averaged weights."""

    def at(step: jax.Array) -> jax.Array:
        t = jnp.maximum(jnp.asarray(step, jnp.float32) - 1.0, 0.0)
        d = jnp.float32(decay)
        if warmup_power > 0:
            d = jnp.minimum(1.0 - (1.0 + t) ** -warmup_power, d)
        return jnp.where(t > 0, d, 0.0)

    return at


def update(ema: Any, variables: Any, decay: jax.Array) -> Any:
    """``decay * ema + (1 - decay) * variables``, leaf by leaf, in the EMA's dtype."""
    return jax.tree.map(
        lambda e, v: (decay * e + (1.0 - decay) * v).astype(e.dtype), ema, variables
    )


def variables_for_inference(state: Any, use_ema: bool = True) -> dict[str, Any]:
    """The ``{'params', 'batch_stats'}`` to predict or export with: the EMA's when the state (a
    TrainState or its dict, e.g. a restored checkpoint) holds one and ``use_ema``, else the raw."""
    get = state.get if isinstance(state, Mapping) else lambda key: getattr(state, key, None)
    ema = get("ema")
    chosen = (
        ema
        if use_ema and ema is not None
        else {"params": get("params"), "batch_stats": get("batch_stats")}
    )
    return {"params": chosen["params"], "batch_stats": chosen.get("batch_stats") or {}}
