"""timm -> Flax: ResNet-D (deep stem, average-pool shortcut) block by block, and the shared
torchvision layout of timm's plain ResNets."""

import importlib.util

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
if importlib.util.find_spec("timm") is None:  # imported through the torchvision shim below
    pytest.skip("timm is not installed", allow_module_level=True)

from resnet_jax.convert import CheckpointMismatchError, from_timm, from_torchvision  # noqa: E402
from resnet_jax.convert.inputs import sample_photographs  # noqa: E402
from resnet_jax.convert.numerics import build_reference, make_inputs, run_comparison  # noqa: E402
from resnet_jax.convert.timm import published_name  # noqa: E402
from resnet_jax.convert.torch_compat import import_timm  # noqa: E402

TOL = 1e-4
PHOTO = [p for p in sample_photographs() if p.name == "china.jpg"]


@pytest.fixture(scope="module")
def resnet50d():
    return build_reference("timm", "resnet50d", seed=0)


@pytest.mark.parametrize("size", [224, 161])
def test_random_resnet50d_matches_timm_block_by_block(resnet50d, size):
    comparison = run_comparison(resnet50d, make_inputs(resnet50d.preset, size, 1, PHOTO), TOL)
    print(comparison.format())
    assert comparison.logits_max_abs <= TOL
    assert max(r.rel for r in comparison.rows if r.name != "logits") <= TOL
    assert all(comparison.top1) and all(comparison.top5)


def test_resnet50d_stem_and_shortcut_weights_land_where_timm_keeps_them(resnet50d):
    sd = resnet50d.model.state_dict()
    params = resnet50d.variables["params"]
    np.testing.assert_array_equal(
        params["stem_conv3"]["kernel"], sd["conv1.6.weight"].numpy().transpose(2, 3, 1, 0)
    )
    np.testing.assert_array_equal(params["stem_bn3"]["scale"], sd["bn1.weight"].numpy())
    np.testing.assert_array_equal(
        params["layer2_0"]["downsample_bn"]["bias"], sd["layer2.0.downsample.2.bias"].numpy()
    )


def test_random_resnet18d_matches_timm_at_a_small_odd_size():
    reference = build_reference("timm", "resnet18d", seed=3)
    comparison = run_comparison(reference, make_inputs(reference.preset, 65, 2, []), TOL)
    assert comparison.passed, comparison.format()


def test_timm_plain_resnet_uses_the_torchvision_layout():
    model = import_timm().create_model("resnet34")
    a, b = from_timm(model, "resnet34"), from_torchvision(model.state_dict(), "resnet34")
    assert jax.tree.all(jax.tree.map(np.array_equal, a, b))


def test_resnet50_checkpoint_does_not_fit_resnet50d():
    with pytest.raises(CheckpointMismatchError) as info:
        from_timm(import_timm().create_model("resnet50"), "resnet50d")
    assert "conv1.0.weight" in info.value.missing and "conv1.weight" in info.value.unexpected


def test_published_timm_weights_are_named_by_tag_and_checked_offline():
    assert published_name("resnet50", "a1_in1k") == "resnet50.a1_in1k"
    assert published_name("resnet50d", "resnet50d.ra2_in1k") == "resnet50d.ra2_in1k"
    with pytest.raises(ValueError, match="published: .*a1_in1k"):
        published_name("resnet50", "no_such_tag")
