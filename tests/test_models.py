"""The model zoo: architectures exact to torchvision, timm, Keras and the paper."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax import create_model, list_models
from resnet_jax.models.blocks import Bottleneck
from resnet_jax.models.layers import LayerFactory, avg_pool_2x2_ceil, max_pool_3x3_s2
from resnet_jax.models.summary import count, summarize


def shapes(model, size, batch=1, **kwargs):
    x = jax.ShapeDtypeStruct((batch, size, size, model.in_channels), jnp.float32)

    def run(x):
        variables = model.init(jax.random.key(0), x)
        return variables, model.apply(variables, x, **kwargs)

    return jax.eval_shape(run, x)


def tiny(name="resnet18", **kwargs):
    """A narrow network with the named topology, cheap enough to run on the CPU."""
    widths = dict(stem_width=8, stage_widths=(8, 8, 16, 16), num_classes=5)
    if "resnext" in name:
        widths.update(groups=2, width_per_group=32)
    if create_model(name).stem == "cifar":
        widths = dict(stem_width=4, stage_widths=(4, 8, 8), num_classes=5)
    return create_model(name, **{**widths, **kwargs})


# Parameters at each model's default classes: torchvision's and timm's published counts (1000
# classes), and the CIFAR-10 ResNets of the paper's Table 6 (0.27M, 0.46M, 0.66M, 0.85M, 1.7M).
# tests/test_spec.py checks every recipe's network against this table.
PARAMS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnet50d": 25_576_264,
    "resnet20": 269_722,
    "resnet32": 464_154,
    "resnet44": 658_586,
    "resnet56": 853_018,
    "resnet110": 1_727_962,
}


@pytest.mark.parametrize("name, expected", PARAMS.items())
def test_parameter_count_equals_reference(name, expected):
    model = create_model(name)
    variables, _ = shapes(model, 32 if model.stem == "cifar" else 224)
    assert count(variables["params"]) == expected


@pytest.mark.parametrize(
    "name, expected",
    [
        ("resnet50_v1", 25_636_712),
        ("resnet101_v1", 44_707_176),
        ("resnet152_v1", 60_419_944),
        ("resnet50_v2", 25_613_800),
        ("resnet101_v2", 44_675_560),
        ("resnet152_v2", 60_380_648),
    ],
)
def test_keras_count_includes_bn_moving_statistics(name, expected):
    variables, _ = shapes(create_model(name), 224)
    assert count(variables["params"]) + count(variables["batch_stats"]) == expected


def test_cifar_resnet20_has_the_papers_size():
    variables, out = shapes(create_model("resnet20"), 32)
    assert count(variables["params"]) == PARAMS["resnet20"]
    assert out.shape == (1, 10)


def test_plain_nets_have_the_same_parameters_and_no_shortcuts():
    res, _ = shapes(create_model("resnet56"), 32)
    plain, _ = shapes(create_model("plain56"), 32)
    assert count(res["params"]) == count(plain["params"]) == PARAMS["resnet56"]
    assert not any("downsample" in k for block in plain["params"].values() for k in block)


def test_resnet50_multiply_adds_at_224():
    s = summarize(create_model("resnet50"), 224, "resnet50")
    assert s.params == PARAMS["resnet50"]
    assert round(s.macs / 1e9, 2) == 4.09
    assert "25,557,032 parameters" in str(s) and "4.09 G multiply-adds" in str(s)


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("size", [224, 97])
def test_output_shape_for_every_model(name, size):
    model = create_model(name)
    if model.stem == "cifar":
        size = 32 if size == 224 else 27
    _, out = shapes(model, size, batch=2)
    assert out.shape == (2, model.num_classes)
    assert out.dtype == jnp.float32


@pytest.mark.parametrize(
    "name, size, expected",
    [
        ("resnet50", 224, {"stem": 56, "layer1": 56, "layer2": 28, "layer3": 14, "layer4": 7}),
        ("resnet50", 97, {"stem": 25, "layer1": 25, "layer2": 13, "layer3": 7, "layer4": 4}),
        ("resnet50_v2", 97, {"stem": 25, "layer1": 13, "layer2": 7, "layer3": 4, "layer4": 4}),
        ("resnet50d", 161, {"stem": 41, "layer1": 41, "layer2": 21, "layer3": 11, "layer4": 6}),
        ("resnet18", 225, {"stem": 57, "layer1": 57, "layer2": 29, "layer3": 15, "layer4": 8}),
        ("resnet20", 32, {"stem": 32, "layer1": 32, "layer2": 16, "layer3": 8}),
    ],
)
def test_stage_feature_shapes(name, size, expected):
    model = create_model(name)
    _, feats = shapes(model, size, return_features=True)
    widths = {"stem": model.stem_width * (2 if model.stem == "deep" else 1)}
    expansion = 4 if model.block == "bottleneck" else 1
    for i, w in enumerate(model.stage_widths):
        widths[f"layer{i + 1}"] = w * expansion
    for key, side in expected.items():
        assert feats[key].shape == (1, side, side, widths[key]), key
    assert feats["pooled"].shape == (1, widths[f"layer{len(model.stage_widths)}"])
    assert feats["logits"].shape == (1, model.num_classes)


@pytest.mark.parametrize(
    "pooling, expected", [("avg", (1, 2048)), ("max", (1, 2048)), (None, (1, 7, 7, 2048))]
)
def test_headless_backbone_pooling(pooling, expected):
    _, out = shapes(create_model("resnet50", include_top=False, pooling=pooling), 224)
    assert out.shape == expected


def test_num_classes_override():
    _, out = shapes(create_model("resnet50", num_classes=37), 64)
    assert out.shape == (1, 37)


def test_full_size_resnet50_forward_is_finite_and_deterministic():
    model = create_model("resnet50")
    x = jax.random.normal(jax.random.key(1), (1, 224, 224, 3))
    variables = jax.jit(model.init)(jax.random.key(0), x)
    apply = jax.jit(model.apply)
    a, b = apply(variables, x), apply(variables, x)
    assert a.shape == (1, 1000)
    assert np.isfinite(np.asarray(a)).all()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(
    "name",
    [
        "resnet18",
        "resnet50",
        "resnet50_v1",
        "resnet50_v2",
        "resnet50d",
        "resnext50_32x4d",
        "resnet20",
        "plain20",
    ],
)
def test_train_mode_updates_batch_stats_and_eval_mode_does_not(name):
    model = tiny(name)
    x = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    _, train_state = model.apply(variables, x, train=True, mutable=["batch_stats"])
    _, eval_state = model.apply(variables, x, train=False, mutable=["batch_stats"])
    before = jax.tree_util.tree_leaves(variables["batch_stats"])
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(before, jax.tree_util.tree_leaves(train_state["batch_stats"]), strict=True)
    ]
    assert all(changed)
    for a, b in zip(before, jax.tree_util.tree_leaves(eval_state["batch_stats"]), strict=True):
        np.testing.assert_array_equal(a, b)
    y1, y2 = model.apply(variables, x), model.apply(variables, x)
    np.testing.assert_array_equal(np.asarray(y1), np.asarray(y2))


def test_wrong_input_rank_names_the_model():
    model = tiny()
    with pytest.raises(AssertionError, match="ResNet expects NHWC images"):
        model.init(jax.random.key(0), jnp.zeros((32, 32, 3)))


def test_wrong_channel_count_is_a_clear_error():
    model = tiny()
    with pytest.raises(ValueError, match=r"expects 3 input channels.*shape \(1, 32, 32, 1\)"):
        model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


def test_block_names_itself_in_shape_errors():
    block = Bottleneck(features=16, in_channels=64, layers=LayerFactory(), name="layer2_0")
    with pytest.raises(ValueError, match=r"layer2_0 \(Bottleneck\) expects 64 input channels"):
        block.init(jax.random.key(0), jnp.zeros((1, 8, 8, 32)))
    with pytest.raises(AssertionError, match=r"\[layer2_0 \(Bottleneck\) expects NHWC"):
        block.init(jax.random.key(0), jnp.zeros((8, 8, 64)))


def test_bfloat16_compute_keeps_params_and_statistics_in_float32():
    model = tiny("resnet50", dtype=jnp.bfloat16)
    x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
    variables = model.init(jax.random.key(0), x)
    (logits, feats), state = model.apply(
        variables,
        x,
        train=True,
        mutable=["batch_stats"],
        method=lambda m, x, train: (m(x, train), m(x, train, return_features=True)),
    )
    dtypes = {a.dtype for a in jax.tree_util.tree_leaves((variables, state))}
    assert dtypes == {jnp.dtype(jnp.float32)}
    assert feats["layer4"].dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32


def test_zero_init_last_bn_and_he_init():
    model = create_model("resnet50", zero_init_last_bn=True)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    assert not np.any(params["layer3_2"]["bn3"]["scale"])
    assert np.all(params["layer3_2"]["bn2"]["scale"] == 1)
    kernel = np.asarray(params["layer3_2"]["conv2"]["kernel"])  # 3x3x256x256, fan_out 2304
    assert abs(kernel.std() / np.sqrt(2.0 / (9 * 256)) - 1) < 0.02
    fc = np.asarray(params["fc"]["kernel"])  # torch Linear: U(-1/sqrt(2048), 1/sqrt(2048))
    assert np.abs(fc).max() <= 1 / np.sqrt(2048)


def test_max_pool_pads_with_minus_infinity():
    x = -jnp.ones((1, 4, 4, 1)) - jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(max_pool_3x3_s2(x)[0, :, :, 0], [[-1, -2], [-5, -6]])
    np.testing.assert_array_equal(max_pool_3x3_s2(x, pad_value=0.0)[0, :, :, 0], [[0, 0], [0, -6]])


def test_resnet_d_average_pool_matches_ceil_mode_without_padding_counts():
    x = jnp.arange(25.0).reshape(1, 5, 5, 1)
    out = np.asarray(avg_pool_2x2_ceil(x))[0, :, :, 0]
    a = np.arange(25.0).reshape(5, 5)
    assert out.shape == (3, 3)
    assert out[0, 0] == a[:2, :2].mean() and out[2, 2] == a[4, 4] and out[0, 2] == a[:2, 4].mean()


def test_symmetric_padding_samples_the_pytorch_grid():
    """A 3x3/2 conv whose kernel picks the centre tap returns pixels (0, 2, 4, ...)."""
    conv = LayerFactory().conv(1, 3, 2)
    kernel = jnp.zeros((3, 3, 1, 1)).at[1, 1, 0, 0].set(1.0)
    x = jnp.arange(36.0).reshape(1, 6, 6, 1)
    y = conv.apply({"params": {"kernel": kernel}}, x)
    np.testing.assert_array_equal(y[0, :, :, 0], np.arange(36.0).reshape(6, 6)[::2, ::2])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(variant="v3"), "variant 'v3'"),
        (dict(block="basic", groups=32), "basic blocks support only groups=1"),
        (dict(include_top=True, pooling=None), "include_top=True needs pooling"),
        (dict(stage_widths=(64, 128)), "4 stage_sizes but 2 stage_widths"),
        (dict(depth=50), "Unknown option"),
    ],
)
def test_impossible_configuration_is_rejected(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model("resnet50", **overrides)


def test_unknown_model_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown model 'resnet51'.*resnet50"):
        create_model("resnet51")


def test_models_import_and_run_without_tensorflow():
    code = textwrap.dedent("""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name == "tensorflow" or name.startswith("tensorflow."):
                    raise ImportError("tensorflow is blocked in this test")
        sys.meta_path.insert(0, Block())
        import jax, jax.numpy as jnp
        import resnet_jax
        from resnet_jax.models.summary import summarize
        m = resnet_jax.create_model("resnet18", num_classes=3)
        v = m.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
        assert m.apply(v, jnp.ones((1, 32, 32, 3))).shape == (1, 3)
        summarize(m, 32)
        assert not any(k.startswith("tensorflow") for k in sys.modules)
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
