"""Keras 3 ``keras.applications.ResNet50`` runners on the JAX backend.

Uses Keras's stateless API under ``jax.jit``: ``model.stateless_call(..., training=True)`` for
the forward pass (BN batch statistics), softmax cross-entropy in float32, ``jax.grad``, and
``keras.optimizers.SGD(momentum=0.9).stateless_apply``; the state is donated, the loss summed
on the device. bf16 is the ``mixed_bfloat16`` policy (float32 variables; Keras BN computes in
float32). Note: Keras ResNet50 is ResNet v1 (stride on the first 1x1, conv biases), slightly
fewer FLOPs than torchvision's v1.5; resnet-jax's ``resnet50_v1`` is the same architecture.
"""

from __future__ import annotations

import os
import time
from typing import Any

from benchmarks.common import peak_flops
from benchmarks.jax_bench import compiled_flops, compiled_memory, device_peak_bytes

POLICIES = {"bf16": "mixed_bfloat16", "fp32": "float32"}


def import_keras():
    """Imports Keras with the JAX backend; raises if another backend was already chosen."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    if keras.backend.backend() != "jax":
        raise RuntimeError(
            f"Keras runs on the {keras.backend.backend()!r} backend; set KERAS_BACKEND=jax "
            "before anything imports Keras."
        )
    return keras


class _KerasRunner:
    def __init__(
        self,
        *,
        precision: str,
        batch_size: int,
        image_size: int,
        num_classes: int = 1000,
        label: str = "keras",
        warmup: int = 1,
    ) -> None:
        if precision not in POLICIES:
            raise ValueError(f"Unknown precision {precision!r}; expected one of {list(POLICIES)}.")
        self.precision, self.batch_size, self.image_size = precision, batch_size, image_size
        self.num_classes, self.label, self.warmup = num_classes, label, warmup
        self.images_per_step = batch_size

    def _build(self) -> None:
        import jax
        import numpy as np

        keras = import_keras()
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(POLICIES[self.precision])
        try:
            keras.utils.set_random_seed(0)
            self._model = keras.applications.ResNet50(
                weights=None,
                input_shape=(self.image_size, self.image_size, 3),
                classes=self.num_classes,
                classifier_activation=None,
            )
        finally:
            keras.config.set_dtype_policy(previous)
        self._device = jax.devices()[0]
        rng = np.random.default_rng(0)
        shape = (self.batch_size, self.image_size, self.image_size, 3)
        self._x = jax.device_put(rng.standard_normal(shape, dtype=np.float32), self._device)
        labels = rng.integers(0, self.num_classes, size=self.batch_size, dtype=np.int32)
        self._y = jax.device_put(labels, self._device)

    def _compile(self, fn: Any, *args: Any) -> dict[str, Any]:
        start = time.perf_counter()
        lowered = fn.lower(*args)
        lowered_at = time.perf_counter()
        self._fn = lowered.compile()
        done = time.perf_counter()
        flops = compiled_flops(self._fn)
        return {
            "lower_seconds": lowered_at - start,
            "compile_seconds": done - lowered_at,
            "flops_per_step": flops,
            "flops_per_image": flops / self.batch_size if flops else None,
            "peak_flops": peak_flops(self._device.device_kind, self.precision),
            "compiled_memory": compiled_memory(self._fn),
            "arch": "keras.applications ResNet50 (v1)",
            "precision": self.precision,
            "api": self.api,
        }

    def close(self) -> None:
        self._model = self._fn = self._state = self._x = self._y = None


class KerasTrainRunner(_KerasRunner):
    """Keras ResNet50 train step with the stateless API under ``jax.jit`` (state donated)."""

    api = "model.stateless_call + jax.value_and_grad + SGD.stateless_apply under jax.jit"

    def setup(self) -> dict[str, Any]:
        import jax
        import jax.numpy as jnp
        import optax

        keras = import_keras()
        self._build()
        model = self._model
        optimizer = keras.optimizers.SGD(learning_rate=0.1, momentum=0.9)
        optimizer.build(model.trainable_variables)

        def loss_fn(trainable, non_trainable, x, y):
            logits, non_trainable = model.stateless_call(trainable, non_trainable, x, training=True)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y)
            return jnp.mean(loss), non_trainable

        def train_step(state, x, y):
            trainable, non_trainable, opt_vars = state
            (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                trainable, non_trainable, x, y
            )
            trainable, opt_vars = optimizer.stateless_apply(opt_vars, grads, trainable)
            return (trainable, non_trainable, opt_vars), loss

        self._state = jax.device_put(
            (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
                [v.value for v in optimizer.variables],
            ),
            self._device,
        )
        info = self._compile(jax.jit(train_step, donate_argnums=0), self._state, self._x, self._y)
        self.run(self.warmup)
        info["device_peak_bytes"] = device_peak_bytes(self._device)
        return info

    def run(self, steps: int) -> None:
        import jax

        total = None
        for _ in range(steps):
            self._state, loss = self._fn(self._state, self._x, self._y)
            total = loss if total is None else total + loss
        jax.block_until_ready((self._state, total))


class KerasInferRunner(_KerasRunner):
    """Keras ResNet50 inference: ``stateless_call(training=False)`` under ``jax.jit``."""

    api = "model.stateless_call(training=False) under jax.jit"

    def setup(self) -> dict[str, Any]:
        import jax

        self._build()
        model = self._model

        def predict(trainable, non_trainable, x):
            return model.stateless_call(trainable, non_trainable, x, training=False)[0]

        self._state = jax.device_put(
            (
                [v.value for v in model.trainable_variables],
                [v.value for v in model.non_trainable_variables],
            ),
            self._device,
        )
        info = self._compile(jax.jit(predict), *self._state, self._x)
        self.run(self.warmup)
        info["device_peak_bytes"] = device_peak_bytes(self._device)
        return info

    def run(self, steps: int) -> None:
        import jax

        out = None
        for _ in range(steps):
            out = self._fn(*self._state, self._x)
        jax.block_until_ready(out)
