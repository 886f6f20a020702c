"""torchvision -> Flax: block-by-block numerics, files, the reverse direction, clear refusals."""

import os
import pickle

import jax
import numpy as np
import pytest
from recipes import random_variables

pytest.importorskip("torch")

import torch  # noqa: E402

from resnet_jax import create_model  # noqa: E402
from resnet_jax.convert import (  # noqa: E402
    CheckpointMismatchError,
    UnsafeCheckpointError,
    from_torchvision,
    import_torchvision,
    load_torch_file,
    to_torchvision,
)
from resnet_jax.convert.inputs import sample_photographs  # noqa: E402
from resnet_jax.convert.numerics import build_reference, make_inputs, run_comparison  # noqa: E402

TOL = 1e-4
PHOTO = [p for p in sample_photographs() if p.name == "china.jpg"]


def tv_model(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return import_torchvision().models.get_model(name, weights=None).eval()


@pytest.fixture(
    scope="module", params=["resnet18", "resnet50", "wide_resnet50_2", "resnext50_32x4d"]
)
def reference(request):
    return build_reference("torchvision", request.param, seed=0)


@pytest.mark.parametrize("size", [224, 97])
def test_random_weights_match_torchvision_block_by_block(reference, size):
    comparison = run_comparison(reference, make_inputs(reference.preset, size, 1, PHOTO), TOL)
    print(comparison.format())
    assert comparison.logits_max_abs <= TOL
    assert max(r.rel for r in comparison.rows if r.name != "logits") <= TOL
    assert all(comparison.top1) and all(comparison.top5)
    n_blocks = sum(create_model(reference.model_name).stage_sizes)
    assert len(comparison.rows) == n_blocks + 3  # stem, blocks, pooled, logits


def test_reference_batchnorm_statistics_are_randomised(reference):
    stats = jax.tree.leaves(reference.variables["batch_stats"])
    assert all(np.std(s) > 0 for s in stats)  # neither the zeros nor the ones of a fresh init


@pytest.fixture(scope="module")
def resnet18_state_dict():
    return tv_model("resnet18").state_dict()


def test_pth_and_safetensors_files_convert_like_the_state_dict(resnet18_state_dict, tmp_path):
    from safetensors.torch import save_file

    torch.save(resnet18_state_dict, tmp_path / "r18.pth")
    save_file(dict(resnet18_state_dict), str(tmp_path / "r18.safetensors"))
    expected = from_torchvision(resnet18_state_dict, "resnet18")
    for name in ("r18.pth", "r18.safetensors"):
        got = from_torchvision(tmp_path / name, "resnet18")
        assert jax.tree.all(jax.tree.map(np.array_equal, got, expected))


def test_pth_and_safetensors_files_in_a_bucket_convert_like_local_ones(
    resnet18_state_dict, gcs, tmp_path
):
    from etils import epath
    from safetensors.torch import save_file

    torch.save(resnet18_state_dict, tmp_path / "r18.pth")
    save_file(dict(resnet18_state_dict), str(tmp_path / "r18.safetensors"))
    expected = from_torchvision(resnet18_state_dict, "resnet18")
    for name in ("r18.pth", "r18.safetensors"):
        remote = epath.Path(gcs, "weights", name)
        remote.write_bytes((tmp_path / name).read_bytes())
        got = from_torchvision(str(remote), "resnet18")
        assert jax.tree.all(jax.tree.map(np.array_equal, got, expected))


def test_training_checkpoint_wrappers_are_unwrapped(resnet18_state_dict, tmp_path):
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in resnet18_state_dict.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    got = from_torchvision(tmp_path / "ckpt.pth", "resnet18")
    expected = from_torchvision(resnet18_state_dict, "resnet18")
    assert jax.tree.all(jax.tree.map(np.array_equal, got, expected))


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pth_whose_pickle_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "code_ran"
    with open(tmp_path / "evil.pth", "wb") as f:
        pickle.dump({"conv1.weight": _RunsCode(marker)}, f, protocol=2)
    torch.save({"conv1.weight": torch.zeros(1), "x": _RunsCode(marker)}, tmp_path / "evil2.pth")
    for name in ("evil.pth", "evil2.pth"):
        with pytest.raises(UnsafeCheckpointError, match="Refused to load .*weights_only=True"):
            load_torch_file(tmp_path / name)
    assert not marker.exists()


def test_flax_to_torchvision_to_flax_round_trip_is_exact():
    for name in ("resnet50", "resnext50_32x4d"):
        variables = random_variables(create_model(name), seed=1)
        back = from_torchvision(to_torchvision(variables, name), name)
        assert jax.tree.structure(back) == jax.tree.structure(variables)
        assert jax.tree.all(jax.tree.map(np.array_equal, back, variables))


def test_exported_state_dict_loads_strictly_into_torchvision_and_predicts_the_same():
    model = create_model("resnet18")
    x = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype(np.float32)
    variables = random_variables(create_model("resnet18"), seed=2)
    net = tv_model("resnet18")
    result = net.load_state_dict(to_torchvision(variables, "resnet18"), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        theirs = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    with jax.default_matmul_precision("highest"):
        ours = np.asarray(jax.jit(model.apply)(variables, x))
    assert np.abs(ours - theirs).max() <= TOL


@pytest.mark.parametrize(
    "checkpoint, target, counts, example",
    [
        ("resnet34", "resnet18", (0, 80, 0), "layer1.2.conv1.weight"),
        ("resnet18", "resnet34", (80, 0, 0), "layer1.2.conv1.weight"),
        (
            "wide_resnet50_2",
            "resnet50",
            (0, 0, 176),
            "layer1.0.conv1.weight: (128, 64, 1, 1) vs expected (64, 64, 1, 1)",
        ),
        (
            "resnet50",
            "resnext50_32x4d",
            (0, 0, 176),
            "layer1.0.conv2.weight: (64, 64, 3, 3) vs expected (128, 4, 3, 3)",
        ),
    ],
)
def test_checkpoint_of_another_architecture_fails_listing_keys(checkpoint, target, counts, example):
    with pytest.raises(CheckpointMismatchError) as info:
        from_torchvision(tv_model(checkpoint).state_dict(), target)
    error = info.value
    assert (len(error.missing), len(error.unexpected), len(error.misshaped)) == counts
    message = str(error)
    assert (
        f"Checkpoint does not fit {target} (torchvision/timm layout): {counts[0]} missing, "
        in message
    )
    assert example in message
    assert "another depth, width or variant" in message


def test_timm_resnet_d_checkpoint_into_torchvision_resnet_reports_both_stems():
    from resnet_jax.convert import import_timm

    sd = import_timm().create_model("resnet18d").state_dict()
    with pytest.raises(CheckpointMismatchError) as info:
        from_torchvision(sd, "resnet18")
    assert "conv1.weight" in info.value.missing
    assert "conv1.0.weight" in info.value.unexpected
    assert "layer2.0.downsample.2.running_var" in info.value.unexpected  # timm: pool, conv, BN
    assert ("layer2.0.downsample.1.weight", (128, 64, 1, 1), (128,)) in info.value.misshaped


def test_one_wrongly_transposed_kernel_is_caught_at_its_block():
    reference = build_reference("torchvision", "resnet18", seed=4)
    inputs = make_inputs(reference.preset, 64, 2, [])
    assert run_comparison(reference, inputs, TOL).passed
    params = reference.variables["params"]
    kernel = params["layer4_1"]["conv2"]["kernel"]
    params["layer4_1"]["conv2"]["kernel"] = kernel.transpose(1, 0, 2, 3)  # kh <-> kw
    comparison = run_comparison(reference, inputs, TOL)
    rel = {r.name: r.rel for r in comparison.rows}
    assert comparison.failures == ["layer4_1", "pooled", "logits"]
    assert rel["layer4_0"] <= TOL < 100 * TOL < rel["layer4_1"]
