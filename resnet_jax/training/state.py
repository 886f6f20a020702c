"""The training state: everything a step reads and writes, as one pytree of arrays.

No functions or modules inside, so the same object is jitted, sharded and checkpointed.
The optimizer (``tx``) and model stay outside as static arguments of the step.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """step (int32), params (float32), BN statistics, optimizer state, the run's RNG key and,
    with ``ema_decay`` > 0, the weight EMA (``{'params', 'batch_stats'}``; None without)."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    rng: jax.Array
    ema: Any = None

    @property
    def variables(self) -> dict[str, Any]:
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(
    model: nn.Module,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    image_shape: tuple,
    ema: bool = False,
) -> TrainState:
    """Initialises params/BN statistics from ``seed`` (one compile), the optimizer state and,
    with ``ema``, the weight EMA (a copy of the initial weights)."""
    init_rng, state_rng = jax.random.split(jax.random.PRNGKey(seed))

    @jax.jit
    def init(rng: jax.Array) -> TrainState:
        variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
        params, batch_stats = variables["params"], variables.get("batch_stats", {})
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            batch_stats=batch_stats,
            opt_state=tx.init(params),
            rng=state_rng,
            ema={"params": params, "batch_stats": batch_stats} if ema else None,
        )

    return init(init_rng)
