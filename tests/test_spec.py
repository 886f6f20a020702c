"""The run spec: a config resolved once (defaults, derived numbers, refusals), frozen, recorded as
config.json; and the one builder, which gives every recipe the model zoo's network."""

import dataclasses
import inspect
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import optax
import pytest
from recipes import load_config, recipe
from recipes import tiny_synthetic_config as tiny_config
from test_models import PARAMS

from resnet_jax import create_model
from resnet_jax import spec as run_spec
from resnet_jax.build import build, build_model, model_from_config, preset_from_config
from resnet_jax.data.pipeline import DatasetInfo
from resnet_jax.training import restore, train_and_evaluate
from resnet_jax.training.validate import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]
RECIPES = [p.stem for p in sorted((REPO / "configs").glob("*.py")) if p.stem != "__init__"]
IMAGENET = DatasetInfo(1000, 1_281_167, 50_000, None)


def recipe_args(name: str) -> list[str | None]:
    """The arguments a recipe takes (configs/x.py:arg): its depths, or [None] when it takes none."""
    module = recipe(name)
    return list(module.DEPTHS) if inspect.signature(module.get_config).parameters else [None]


RECIPE_ARGS = [(name, arg) for name in RECIPES for arg in recipe_args(name)]


def resolve(config, info=IMAGENET, **kwargs):
    return run_spec.resolve(config, num_devices=8, process_count=1, dataset_info=info, **kwargs)


def count(tree) -> int:
    return sum(x.size for x in jax.tree.leaves(tree))


@pytest.fixture
def source_preset(monkeypatch):
    """init_from weights fed as torchvision's V2 weights are, without reading any weights."""
    monkeypatch.setattr(run_spec, "source_preprocessing", lambda path: {"preset": "torchvision_v2"})


@pytest.mark.parametrize("name, arg", RECIPE_ARGS)
def test_every_recipe_resolves_and_builds_the_zoo_network(name, arg, source_preset):
    """The network each recipe builds, with the classes of the dataset it was published for,
    has the model zoo's parameter count (tests/test_models.py)."""
    config = load_config(name, arg)
    config.init_from = "weights" if name == "finetune_folder" else config.init_from
    params = PARAMS[config.model.name]
    classes = create_model(config.model.name).num_classes
    spec = resolve(config, dataclasses.replace(IMAGENET, num_classes=classes))
    built = build(spec)
    size = spec.config.data.image_size
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    variables = jax.eval_shape(lambda x: built.model.init(jax.random.key(0), x, train=False), x)
    assert count(variables["params"]) == params
    # Momentum (LAMB: two moments) for every trained parameter; the recipe that fine-tunes
    # trains only the head.
    trained = 2048 * 1000 + 1000 if config.finetune.freeze == "backbone" else params
    moments = 2 if config.optimizer.name == "lamb" else 1
    assert 0 <= count(jax.eval_shape(built.tx.init, variables["params"])) - moments * trained <= 4
    assert json.loads(json.dumps(spec.record()))["derived"]["num_classes"] == classes


def test_the_spec_is_frozen_and_resolution_leaves_the_config_alone(source_preset):
    config = load_config("finetune_folder")
    config.init_from = "weights"
    spec = resolve(config)
    assert spec.config.data.preset == "torchvision_v2"  # 'init_from' resolved, once.
    assert config.data.preset == "init_from"  # The caller's config is not changed.
    with pytest.raises(AttributeError, match="immutable"):
        spec.config.batch_size = 1
    with pytest.raises(AttributeError, match="immutable"):
        spec.config.data.preset = "init_from"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.total_steps = 1
    assert build(spec).preset == spec.preset  # The builder reads it as resolved.
    assert (spec.preset.resize, spec.preset.crop) == (232, 224)


def test_every_default_is_applied_to_a_partial_config():
    partial = {
        "model": {"name": "resnet20", "kwargs": {"stage_sizes": [1, 1, 1]}},
        "data": {"dataset": "synthetic", "image_size": 8, "num_classes": 10},
        "batch_size": 16,
        "eval_batch_size": 16,
        "num_train_steps": 6,
        "optimizer": {"warmup_epochs": 0.0},
    }
    spec = resolve(partial, DatasetInfo(10, 128, 32, None))
    defaults = run_spec.default_config()
    assert spec.config.optimizer.to_dict() == {**defaults.optimizer.to_dict(), "warmup_epochs": 0}
    assert spec.config.finetune.to_dict() == defaults.finetune.to_dict()
    assert spec.config.data.crop_pct == 0.875 and spec.config.data.synthetic_size == 1024
    assert spec.config.model.kwargs.stage_sizes == (1, 1, 1)  # JSON lists as tuples.
    assert set(spec.config.keys()) == set(defaults.keys())


def test_derived_numbers_of_a_small_run():
    config = tiny_config(num_train_steps=-1, num_epochs=2.5, eval_batch_size=24)
    config.optimizer.warmup_epochs = 0.5
    spec = resolve(config, DatasetInfo(10, 130, 40, tuple("0123456789")))
    assert (spec.steps_per_epoch, spec.total_steps, spec.warmup_steps) == (8, 20, 4)
    assert (spec.per_device_batch, spec.local_eval_batch) == (2, 24)
    assert spec.class_names == tuple("0123456789") and spec.num_classes == 10
    lr_fn = build(spec).lr_fn
    assert float(lr_fn(2)) == pytest.approx(0.1 * 16 / 256 / 2)  # Halfway up the warmup.
    record = json.loads(json.dumps(spec.record()))
    assert record["derived"]["total_steps"] == 20 and record["derived"]["preset"]["crop"] == 8
    assert run_spec.complete(record).to_dict() == spec.config.to_dict()  # Reads back the same.


def test_impossible_schedule_and_tiny_images_are_rejected():
    config = load_config("quickstart")
    config.optimizer.warmup_epochs = 20.0
    with pytest.raises(ConfigError, match=r"warmup \(20.0 epochs = 440 steps\) must be shorter"):
        resolve(config, DatasetInfo(10, 22 * 32, 359, None))
    config = load_config("imagenet_resnet50_gpu8")
    config.data.image_size = 16
    with pytest.raises(ConfigError, match="image_size=16 is too small for 'resnet50'.*32 px"):
        resolve(config)


def test_several_problems_are_reported_together():
    config = load_config("quickstart")
    config.dtype = "float8"
    config.parallelism = "dp"
    config.eval_batch_size = 100
    with pytest.raises(ConfigError) as error:
        resolve(config)
    for fragment in ("dtype 'float8'", "parallelism 'dp'", "eval_batch_size=100"):
        assert fragment in str(error.value)


def test_the_rsb_recipes_build_lamb_bce_mixing_drop_path_and_no_ema():
    a1, a3 = (resolve(load_config(f"imagenet_resnet50_rsb_{n}")) for n in ("a1", "a3"))
    assert a1.total_steps == 600 * (1_281_167 // 2048) and a3.config.data.image_size == 160
    # A3 trains at 160 px and is evaluated as timm's resnet50.a3_in1k: 224 px, crop 0.95.
    assert a1.warmup_steps == 5 * 625 and (a3.preset.crop, a3.preset.resize) == (224, 235)
    built = build(a1)
    assert built.model.drop_path_rate == 0.05 and build(a3).model.drop_path_rate == 0.0
    assert built.ema_decay is None and built.augment_fn is not None
    assert float(built.lr_fn(a1.warmup_steps)) == pytest.approx(5e-3)
    logits, labels = jnp.array([[3.0, -3.0, 0.0]]), jnp.array([[0.5, 0.1, 0.4]])
    # BCE on targets binarised above 0.2 (timm's BinaryCrossEntropy with target_threshold).
    expected = jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.array([[1.0, 0.0, 1.0]])))
    assert float(built.loss_fn(logits, labels)[0]) == pytest.approx(float(expected), rel=1e-6)


def test_recipe_fields_are_refused_naming_each_field():
    config = load_config("quickstart")
    config.update(ema_decay=1.0, bce_target_threshold=0.2, mixup_prob=1.5, cutmix_alpha=1.0)
    config.model.drop_path_rate = -0.1
    config.data.auto_augment = "rand-x9"
    config.data.random_erase_prob = 2.0
    config.batch_size = 24  # 3 per device: Mixup/CutMix need an even share.
    with pytest.raises(ConfigError) as error:
        resolve(config)
    for fragment in (
        "ema_decay=1.0 must be in [0, 1) (0 turns the EMA off",
        "bce_target_threshold=0.2 needs loss='bce'",
        "mixup_prob=1.5 must be a probability in [0, 1]",
        "model.drop_path_rate=-0.1 must be in [0, 1)",
        "data.auto_augment='rand-x9': Unknown RandAugment section 'x9'",
        "data.random_erase_prob=2.0 must be a probability",
        "batch_size=24 over 8 devices gives 3; use a batch_size that is an even multiple of 8",
    ):
        assert fragment in str(error.value)
    config = load_config("quickstart")
    config.loss = "hinge"
    with pytest.raises(ConfigError, match=r"loss='hinge' is not one of \('softmax_ce', 'bce'\)"):
        resolve(config)


def test_auto_augment_off_the_grain_pipeline_is_refused_naming_the_fix():
    config = load_config("imagenet_resnet50_rsb_a3")
    config.data.pipeline = "tfdata"
    with pytest.raises(ConfigError) as error:
        resolve(config)
    assert str(error.value) == (
        "data.auto_augment='rand-m6-mstd0.5-inc1' is applied by the Grain input pipeline only, "
        "which this run does not use (data.pipeline='tfdata', data.dataset='imagenet2012'): set "
        "data.pipeline='grain' (TFDS datasets must be stored as ArrayRecord for it), or "
        "data.auto_augment='' to train without it."
    )
    config.data.auto_augment = ""
    assert resolve(config).config.data.pipeline == "tfdata"


def test_fine_tuning_settings_are_refused_naming_field_and_fix():
    config = load_config("quickstart")
    config.finetune.freeze = "stages"
    config.finetune.frozen_stages = 4
    config.init_from = "weights"
    with pytest.raises(ConfigError, match=r"finetune.frozen_stages=4 must be in \[1, 3\]"):
        resolve(config)


def test_space_to_depth_and_remat_are_model_fields_and_kwargs_override_them():
    from resnet_jax.parallel import create_data_parallel

    config = load_config("default")
    config.model.name = "resnet18"
    parallel = create_data_parallel("shard_map")
    plain = build_model(config, 10, parallel=parallel)
    assert (plain.space_to_depth, plain.remat, plain.num_classes) == (False, False, 10)
    assert plain.bn_axis_name is not None and build_model(config, 10).bn_axis_name is None
    config.model.space_to_depth = True
    config.model.remat = True
    model = build_model(config, 10, parallel=parallel)
    assert model.space_to_depth is True and model.remat is True
    config.model.kwargs = ml_collections.ConfigDict({"remat": False})
    assert build_model(config, 10, parallel=parallel).remat is False


def test_a_config_json_from_before_the_spec_still_loads_and_resumes(tmp_path, fast_compile):
    """An older record: no 'derived' section, and sections later versions added are missing."""
    config = tiny_config(keep_checkpoints=0)
    old = json.loads(config.to_json_best_effort())
    del old["finetune"], old["model"]["remat"], old["data"]["image_dtype"], old["data"]["pipeline"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    model = model_from_config(restore.read_config(tmp_path), 10)
    assert (model.stage_sizes, model.remat, model.num_classes) == ((1, 1, 1), False, 10)
    assert preset_from_config(restore.read_config(tmp_path)).crop == 8

    changed = tiny_config(keep_checkpoints=0, batch_size=32)
    with pytest.raises(ConfigError, match="batch_size: 16 -> 32"):
        train_and_evaluate(changed, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text()) == old  # Nothing changed.
    # Before data.pipeline existed, runs read their data by tf.data: Grain's order is another run.
    with pytest.raises(ConfigError, match="data.pipeline: 'tfdata' -> 'grain'"):
        train_and_evaluate(config, str(tmp_path))
    config.data.pipeline = "tfdata"
    assert train_and_evaluate(config, str(tmp_path))["step"] == 6
    record = json.loads((tmp_path / "config.json").read_text())
    assert record["derived"]["total_steps"] == 6 and record["finetune"]["freeze"] == "none"
