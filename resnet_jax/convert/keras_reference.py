"""Keras Applications ResNets as references: built with ``KERAS_BACKEND=jax`` (no TensorFlow).

The classifier is built without its softmax so logits compare with ours. A functional
Keras model has a fixed input size, so each image size gets its own instance sharing the
weights; block outputs come from a sub-model on ``pool1_pool``, ``conv{s}_block{i}_out``,
``post_relu`` (v2) and ``avg_pool``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from resnet_jax import storage
from resnet_jax.convert.keras import from_keras
from resnet_jax.convert.keras_layout import keras_app_name
from resnet_jax.convert.published import describe
from resnet_jax.convert.reference import (
    RESIDUAL_BRANCH_SCALE,
    Activations,
    Reference,
    calibration_batch,
    disable_torch_tf32,
    download,
    perturbation,
)
from resnet_jax.data.presets import Preset, get_preset

IMAGENET_WEIGHTS = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"


def import_keras() -> Any:
    """Keras on the JAX backend, unless the user chose another before any import."""
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras

    return keras


def build_keras_model(app: str, weights: str | None, size: int = 224) -> Any:
    keras = import_keras()
    return getattr(keras.applications, app)(
        weights=weights, input_shape=(size, size, 3), classifier_activation=None
    )


def model_function(model: Any, training: bool) -> Callable[[np.ndarray], Any]:
    """The model as a function of its input. On JAX one jitted ``stateless_call`` (one compile,
    not one per operation as eager Keras would do); BN statistics a training call computes are
    written back. Other Keras backends run eagerly."""
    backend = import_keras().backend.backend()
    if backend == "tensorflow":  # full float32 on GPUs there too
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif backend == "torch":
        disable_torch_tf32()
    if backend != "jax":
        return lambda x: model(x, training=training)

    @jax.jit
    def pure(trainable, non_trainable, x):
        return model.stateless_call(trainable, non_trainable, x, training=training)

    def call(x: np.ndarray) -> Any:
        outputs, non_trainable = pure(
            [v.value for v in model.trainable_variables],
            [v.value for v in model.non_trainable_variables],
            x,
        )
        if training:
            for variable, value in zip(model.non_trainable_variables, non_trainable, strict=True):
                variable.assign(value)
        return outputs

    return call


def randomize_keras_weights(model: Any, seed: int, preset: Preset) -> None:
    """Seeded random weights without TensorFlow (``keras.utils.set_random_seed`` would import
    it): He-normal kernels, small random biases and, as for PyTorch, BN statistics measured
    on ``calibration_batch`` (momentum 0 for one training-mode call), then perturbed. Each
    residual branch's last layer (v1 ``_3_bn``, v2 ``_3_conv``) is scaled down by
    ``RESIDUAL_BRANCH_SCALE``."""
    keras = import_keras()
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D | keras.layers.Dense):
            shape = layer.kernel.shape
            gain = 1.0 if isinstance(layer, keras.layers.Dense) else 2.0
            # v2 branches end in this conv; in v1 the BN after it undoes the scale anyway.
            scale = RESIDUAL_BRANCH_SCALE if layer.name.endswith("_3_conv") else 1.0
            std = scale * np.sqrt(gain / np.prod(shape[:-1]))
            layer.kernel.assign((std * rng.standard_normal(shape)).astype(np.float32))
            if layer.use_bias:
                bias = 0.1 * scale * rng.standard_normal(layer.bias.shape)
                layer.bias.assign(bias.astype(np.float32))
    norms = [x for x in model.layers if isinstance(x, keras.layers.BatchNormalization)]
    draws = [perturbation(seed + i, bn.gamma.shape[0]) for i, bn in enumerate(norms)]
    for layer, (gamma, beta, _, _) in zip(norms, draws, strict=True):
        scale = RESIDUAL_BRANCH_SCALE if layer.name.endswith("_3_bn") else 1.0
        layer.gamma.assign(scale * gamma)
        layer.beta.assign(scale * beta)
        layer.momentum = 0.0
    model_function(model, training=True)(calibration_batch(seed, preset, model.input_shape[1]))
    for layer, (_, _, shift, factor) in zip(norms, draws, strict=True):
        layer.momentum = 0.99
        mean, var = np.asarray(layer.moving_mean.value), np.asarray(layer.moving_variance.value)
        layer.moving_mean.assign(mean + shift * np.sqrt(var))
        layer.moving_variance.assign(var * factor)


def output_layers(model: Any, v2: bool) -> dict[str, str]:
    """Our row name -> the Keras layer whose output it is."""
    names = {"stem": "pool1_pool"}
    for layer in model.layers:
        parts = layer.name.split("_")
        if len(parts) == 3 and parts[2] == "out" and parts[1].startswith("block"):
            stage, index = int(parts[0][len("conv") :]) - 1, int(parts[1][len("block") :]) - 1
            names[f"layer{stage}_{index}"] = layer.name
    if v2:
        names["post_bn"] = "post_relu"
    names.update(pooled="avg_pool", logits="predictions")
    return names


def keras_runner(model: Any, app: str) -> Callable[[np.ndarray], Activations]:
    """Runs the model (or a same-weights copy at the input's size) with every row output."""
    keras = import_keras()
    cache: dict[int, Any] = {}

    def run(x: np.ndarray) -> Activations:
        size = x.shape[1]
        if size not in cache:
            sized = model
            if model.input_shape[1:3] != (size, size):
                sized = build_keras_model(app, None, size)
                sized.set_weights(model.get_weights())
            rows = output_layers(sized, app.endswith("V2"))
            probe = keras.Model(sized.input, [sized.get_layer(n).output for n in rows.values()])
            cache[size] = (list(rows), model_function(probe, training=False))
        names, forward = cache[size]
        with jax.default_matmul_precision("highest"):
            values = forward(np.asarray(x, np.float32))
        return {k: np.asarray(v) for k, v in zip(names, values, strict=True)}

    return run


def build_reference(name: str, weights: str | None = None, seed: int = 0) -> Reference:
    """Keras's ResNet from a weights file (.weights.h5, .keras, legacy .h5), 'imagenet', or a
    seeded random init with randomised BN statistics; our side converts the file itself."""
    ours, app = keras_app_name(name)
    preset = get_preset("keras_tf" if app.endswith("V2") else "keras_caffe")
    if weights is None or storage.is_remote(weights) or os.path.exists(weights):
        model = build_keras_model(app, None)
        if weights is None:
            randomize_keras_weights(model, seed, preset)
            label, source = f"random (seed {seed})", model
        else:
            label, source = str(weights), weights
    elif weights == "imagenet":
        model = download(
            lambda: build_keras_model(app, "imagenet"),
            f"Keras {app} 'imagenet' weights",
            IMAGENET_WEIGHTS,
            f"--weights /path/to/{app.lower()}_weights_tf_dim_ordering_tf_kernels.h5 "
            "(the legacy .h5 Keras downloads to ~/.keras/models)",
        )
        label, source = f"{app} imagenet", model
    else:
        raise ValueError(f"Keras weights are a file or 'imagenet', not {weights!r}.")
    variables = from_keras(source, ours)  # checks every key before Keras loads by order
    if source is weights and storage.is_remote(weights):  # Keras loads local files only.
        with tempfile.TemporaryDirectory() as folder:
            model.load_weights(str(storage.copy_into(weights, folder)))
    elif source is weights and weights is not None:
        model.load_weights(weights)
    note = f"{describe(preset)}: the preprocessing of Keras Applications' {app}"
    runner = keras_runner(model, app)
    return Reference("keras", ours, label, preset, variables, runner, model, note)
