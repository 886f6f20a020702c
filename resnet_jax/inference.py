"""Predictor: a network with its preset, labelling and embedding images under jit; built from a
checkpoint on disk or from seeded random weights. ``resnet_jax.predict`` is its command line."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from resnet_jax.checkpoint import CheckpointError, architecture_fingerprint
from resnet_jax.data.classes import imagenet_class_names
from resnet_jax.data.presets import Preset, get_preset
from resnet_jax.images import batches, list_images
from resnet_jax.models import ResNet, create_model


@dataclasses.dataclass(frozen=True)
class Prediction:
    path: str
    indices: tuple[int, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]


@dataclasses.dataclass
class Predictor:
    """A model, its variables, its preprocessing preset and class names, batched under jit."""

    model: Any
    variables: dict
    preset: Preset
    class_names: Sequence[str] | None = None
    batch_size: int = 32

    def __post_init__(self):
        def forward(variables, x):
            feats = self.model.apply(variables, x, return_features=True)
            probs = jax.nn.softmax(feats["logits"]) if "logits" in feats else None
            return probs, feats.get("pooled")

        self._forward = jax.jit(forward)

    def _run(self, inputs: Iterable[str | Path]):
        skipped: list[tuple[str, str]] = []
        outputs = []
        for names, images in batches(list_images(inputs), self.preset, self.batch_size, skipped):
            n = len(names)
            padded = np.zeros((self.batch_size, *images.shape[1:]), np.float32)
            padded[:n] = images  # one compiled shape for every batch
            probs, pooled = self._forward(self.variables, jnp.asarray(padded))
            outputs.append(
                (
                    names,
                    None if probs is None else np.asarray(probs)[:n],
                    None if pooled is None else np.asarray(pooled)[:n],
                )
            )
        for path, why in skipped:
            print(f"skipped {path}: {why}", file=sys.stderr)
        return outputs, skipped

    def check_can_predict(self, top_k: int) -> None:
        """Raises ValueError, before any image is read, if top-k labels cannot be given."""
        if not self.model.include_top:
            raise ValueError(
                "This model has no classifier head (include_top=False); use features() instead."
            )
        if top_k < 1:
            raise ValueError(f"top_k must be at least 1, got {top_k}.")

    def check_can_embed(self) -> None:
        """Raises ValueError, before any image is read, if the model gives no embeddings."""
        if self.model.pooling is None:
            raise ValueError("This model has no global pooling (pooling=None); no embeddings.")

    def _labels(self, outputs, top_k: int) -> list[Prediction]:
        results = []
        for names, probs, _ in outputs:
            order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]  # k > classes: all
            for name, p, idx in zip(names, probs, order, strict=True):
                labels = tuple(self.class_names[i] if self.class_names else str(i) for i in idx)
                results.append(
                    Prediction(
                        str(name),
                        tuple(int(i) for i in idx),
                        labels,
                        tuple(float(p[i]) for i in idx),
                    )
                )
        return results

    def _embeddings(self, outputs) -> tuple[list[str], np.ndarray]:
        names = [str(n) for names, _, _ in outputs for n in names]
        width = self.model.stage_widths[-1] * (4 if self.model.block == "bottleneck" else 1)
        feats = (
            np.concatenate([f for _, _, f in outputs])
            if outputs
            else np.zeros((0, width), np.float32)
        )
        return names, feats

    def predict(
        self, inputs: Iterable[str | Path], top_k: int = 5
    ) -> tuple[list[Prediction], list[tuple[str, str]]]:
        """Top-k classes (all of them when k exceeds their number) of every image under
        ``inputs`` (files or folders)."""
        self.check_can_predict(top_k)
        outputs, skipped = self._run(inputs)
        return self._labels(outputs, top_k), skipped

    def features(
        self, inputs: Iterable[str | Path]
    ) -> tuple[list[str], np.ndarray, list[tuple[str, str]]]:
        """Pooled embeddings (2048-d for ResNet-50) of every image, with their file names."""
        self.check_can_embed()
        outputs, skipped = self._run(inputs)
        return *self._embeddings(outputs), skipped

    def predict_and_features(
        self, inputs: Iterable[str | Path], top_k: int = 5
    ) -> tuple[list[Prediction], list[str], np.ndarray, list[tuple[str, str]]]:
        """Both of the above from one pass over the images."""
        self.check_can_predict(top_k)
        self.check_can_embed()
        outputs, skipped = self._run(inputs)
        return self._labels(outputs, top_k), *self._embeddings(outputs), skipped


def random_predictor(
    model_name: str, preset: Preset, batch_size: int = 32, seed: int = 0, **overrides
) -> Predictor:
    """Seeded random weights: for smoke tests and for numerics checks against a reference."""
    model = create_model(model_name, **overrides)
    x = jnp.zeros((1, preset.crop, preset.crop, model.in_channels))
    variables = jax.jit(model.init)(jax.random.key(seed), x)
    names = imagenet_class_names() if model.num_classes == 1000 else None
    return Predictor(model, variables, preset, names, batch_size)


def load_predictor(path: str | Path, preset: str | None = None, batch_size: int = 32) -> Predictor:
    """A converted checkpoint (with its preset) or a training workdir (latest checkpoint)."""
    from resnet_jax.convert.converted_checkpoint import is_converted, load_converted
    from resnet_jax.training.restore import is_workdir

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such checkpoint directory; give a converted checkpoint or a training "
            "workdir (the --workdir of train.py)."
        )
    if is_converted(path):
        name, variables, metadata = load_converted(path)
        model = create_model(name, **metadata.get("model_overrides", {}))
        chosen = get_preset(preset) if preset else Preset.from_dict(metadata["preset"])
        names = metadata.get("class_names")
        if names is None and model.num_classes == 1000:
            names = imagenet_class_names()
        return Predictor(model, variables, chosen, names, batch_size)
    if not is_workdir(path):
        raise FileNotFoundError(
            f"{path} is neither a converted checkpoint nor a training workdir (no config.json "
            "or checkpoints/ in it); give the folder that resnet_jax.convert or train.py wrote."
        )
    model, variables, train_preset, names = load_workdir(path)
    chosen = get_preset(preset) if preset else train_preset
    return Predictor(model, variables, chosen, names, batch_size)


def load_workdir(workdir: str | Path) -> tuple[ResNet, dict[str, Any], Preset, Any]:
    """(model, variables, eval preset, class names or None) of a workdir's latest checkpoint.

    The model is built from the config stored with the checkpoint, not from config.json, which
    a later run (or a person) may have rewritten; its parameter layout must match the saved one.
    """
    from resnet_jax.training.restore import (
        load_variables,
        model_from_config,
        preset_from_config,
        read_config,
    )
    from resnet_jax.training.workdir import CONFIG_FILE

    variables, meta = load_variables(workdir)
    config_json = Path(workdir) / CONFIG_FILE
    saved = read_config(workdir) if config_json.is_file() else None
    recorded = meta.get("config")
    config = ml_collections.ConfigDict(recorded) if recorded else saved
    source = "the config stored with it" if recorded else str(config_json)
    if config is None:
        raise FileNotFoundError(
            f"{workdir} has no config.json and its checkpoint records no config: restore the "
            "config.json that train.py wrote there."
        )
    params = variables["params"]
    num_classes = int(meta.get("num_classes") or params["fc"]["kernel"].shape[-1])
    model = model_from_config(config, num_classes)
    preset = preset_from_config(config)
    x = jax.ShapeDtypeStruct((1, preset.crop, preset.crop, model.in_channels), jnp.float32)
    built = architecture_fingerprint(jax.eval_shape(model.init, jax.random.key(0), x)["params"])
    held = architecture_fingerprint(params)
    if built != held:
        raise CheckpointError(
            f"The checkpoint in {workdir} (step {meta.get('step')}) holds "
            f"{meta.get('model_name', 'a model')!r} (architecture {held}), but {source} "
            f"describes {config.model.name!r} (architecture {built}). Restore the config.json "
            "that train.py wrote with this checkpoint, or give the workdir of the run you mean."
        )
    if recorded and saved is not None and saved.model.to_dict() != config.model.to_dict():
        print(
            f"note: {config_json} describes {_describe(saved.model)}, but its checkpoint holds "
            f"{_describe(config.model)}; using the checkpoint's own record.",
            file=sys.stderr,
        )
    names = meta.get("class_names")
    return model, variables, preset, tuple(names) if names else None


def _describe(model: ml_collections.ConfigDict) -> str:
    settings = model.to_dict()
    kwargs = settings.get("kwargs") or {}
    return f"{settings['name']!r} ({', '.join(f'{k}={v}' for k, v in kwargs.items())})"
