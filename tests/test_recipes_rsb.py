"""The RSB A3-style recipe end to end on the bundled digits (configs/digits_rsb_a3.py): RandAugment,
BCE on Mixup/CutMix targets, LAMB and a weight EMA train to >= 95% eval top-1, raw and EMA; and
evaluation at data.eval_image_size, larger than the training size (the net is convolutional)."""

import numpy as np
import pytest
from recipes import TINY_STEPS, load_config, tiny_synthetic_config

from resnet_jax.data import grain_pipeline
from resnet_jax.training import train_and_evaluate

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_the_digits_rsb_a3_recipe_trains_to_95_percent_raw_and_ema(tmp_path):
    config = load_config("digits_rsb_a3")
    assert config.data.auto_augment and config.loss == "bce" and config.optimizer.name == "lamb"
    assert config.mixup_alpha > 0 and config.cutmix_alpha > 0 and config.ema_decay > 0
    config.update(progress_bar=False, tensorboard=False, plot=False)
    config.confusion_matrix_max_classes = 0
    config.eval_every_steps = config.checkpoint_every_steps = 10_000  # Both once, at the end.
    evaluation = train_and_evaluate(config, str(tmp_path))["eval"]
    assert evaluation["top1"] >= 0.95, evaluation
    assert evaluation["ema_top1"] >= 0.95, evaluation


def test_evaluation_runs_at_the_eval_image_size(tmp_path, monkeypatch):
    shapes, batches = [], grain_pipeline.eval_iterator
    monkeypatch.setattr(
        grain_pipeline,
        "eval_iterator",
        lambda *a, **k: (shapes.append(b["image"].shape) or b for b in batches(*a, **k)),
    )
    config = tiny_synthetic_config(eval_every_steps=TINY_STEPS, eval_batch_size=64)
    config.data.eval_image_size = 16  # Trained at 8 px.
    evaluation = train_and_evaluate(config, str(tmp_path))["eval"]
    assert shapes == [(64, 16, 16, 3)] * 4  # 256 synthetic eval images.
    assert evaluation["count"] == 256 and np.isfinite(evaluation["loss"])
