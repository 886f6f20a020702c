"""The model function (images -> logits) as StableHLO, ONNX and LiteRT bytes.

Each takes ``fn`` with the weights closed over and the input ``spec`` (float32 NHWC); the
converters' own packages are imported here only, so the rest of resnet_jax runs without them.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import jax
import numpy as np

from resnet_jax.export import portable

# Lowered for each: the program runs wherever JAX does; jax.export picks the platform at call.
STABLEHLO_PLATFORMS = ("cpu", "cuda", "tpu")


def stablehlo(fn: Callable, image_size: int, channels: int = 3) -> bytes:
    """``jax.export`` serialization with a symbolic batch dimension 'b'."""
    spec = portable.input_spec(image_size, channels, batch="b")
    exported = jax.export.export(jax.jit(fn), platforms=STABLEHLO_PLATFORMS)(spec)
    return bytes(exported.serialize())


def onnx(fn: Callable, image_size: int, channels: int = 3) -> bytes:
    """jax2onnx on the portable program: input 'images' (batch, H, W, C), output 'logits'."""
    import onnx as onnx_lib
    from jax2onnx import to_onnx

    spec = portable.input_spec(image_size, channels, batch="batch")
    closed = portable.trace(fn, spec)
    proto = to_onnx(
        lambda x: portable.evaluate(closed, x, max_pool="slices")[0],
        [spec],
        model_name="resnet_jax",
        input_names=["images"],
        output_names=["logits"],
    )
    onnx_lib.checker.check_model(proto)
    return proto.SerializeToString()


def litert(
    fn: Callable, image_size: int, channels: int = 3, calibration: np.ndarray | None = None
) -> bytes:
    """TFLite flatbuffer through jax2tf and the TFLite converter, one image per call: with a
    fixed shape the converter folds BatchNorm into the convolutions and drops the shape
    arithmetic a symbolic batch brings.

    With ``calibration`` (preprocessed images), full-integer post-training quantisation:
    int8 weights, activations, input and output, so the model runs on integer-only hardware;
    the input and output scales are in the file (``resnet_jax.export.runtime`` applies them).
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf
    from jax.experimental import jax2tf

    spec = portable.input_spec(image_size, channels, batch=1)
    closed = portable.trace(fn, spec)
    tf_fn = tf.function(
        jax2tf.convert(lambda x: portable.evaluate(closed, x)[0]),
        input_signature=[tf.TensorSpec(spec.shape, tf.float32)],
        autograph=False,
    )
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [tf_fn.get_concrete_function()], tf_fn
    )
    if calibration is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()
