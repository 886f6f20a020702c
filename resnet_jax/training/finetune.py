"""Fine-tuning: start from converted or trained weights, with a new head for the dataset's
classes and a backbone that is frozen, trained at a smaller learning rate, or frozen up to a stage.

The run's spec resolves ``data.preset='init_from'`` and checks the settings; the builder freezes
stages and partitions the optimizer; the loop calls ``load_source`` before it builds the train
state and ``initialize`` once it has looked for its own checkpoint: a run that resumes from its
workdir never reads ``init_from`` weights again.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from resnet_jax import parallel as par
from resnet_jax import spec as run_spec
from resnet_jax.models import ResNet
from resnet_jax.training import optim
from resnet_jax.training.state import TrainState
from resnet_jax.training.validate import ConfigError

HEAD = "fc"  # The classifier; everything else is the backbone.
_STAGE = re.compile(r"layer(\d+)_\d+")


@dataclasses.dataclass(frozen=True)
class PretrainedWeights:
    """Weights to start from: where they are, their architecture, variables and preprocessing."""

    path: str
    model_name: str
    variables: dict[str, Any]
    data_fields: dict[str, Any]  # config.data fields that reproduce the source's preprocessing.
    description: str


def load_pretrained(path: str) -> PretrainedWeights:
    """Reads a converted checkpoint (``resnet_jax.verify --save``) or a training workdir."""
    from resnet_jax import card as cards
    from resnet_jax.training import restore

    fields = run_spec.source_preprocessing(path)  # Refuses a path that holds neither.
    if cards.kind(path) == "weights":
        card, variables = cards.read_card(path), cards.restore_variables(path)
        source, name = card.origin.get("framework"), card.origin.get("weights")
        what = f"{card.architecture} converted from {source} ({name})"
        return PretrainedWeights(path, card.architecture, variables, fields, what)
    try:
        name = restore.read_config(path).model.name
        variables, meta = restore.load_variables(path)
    except FileNotFoundError as e:
        raise ConfigError(f"init_from={path!r}: {e}") from e
    what = f"{name} trained in {path} (step {meta.get('step')})"
    return PretrainedWeights(path, name, variables, fields, what)


def _flat(tree: Any) -> dict[str, Any]:
    return {"/".join(k): v for k, v in traverse_util.flatten_dict(dict(tree)).items()}


def _is_head(key: str) -> bool:
    return key.split("/")[1] == HEAD


def check_weights_fit(
    source: PretrainedWeights, target: Any, *, model_name: str, new_head: bool
) -> None:
    """Raises ConfigError listing the variables (paths, shapes) in which the source's and the
    model's ``{'params', 'batch_stats'}`` differ; the head is exempt when it is replaced."""
    src = {k: tuple(np.shape(v)) for k, v in _flat(source.variables).items()}
    tgt = {k: tuple(v.shape) for k, v in _flat(target).items()}
    if new_head:
        src = {k: v for k, v in src.items() if not _is_head(k)}
        tgt = {k: v for k, v in tgt.items() if not _is_head(k)}
    missing = sorted(tgt.keys() - src.keys())
    extra = sorted(src.keys() - tgt.keys())
    differ = sorted(k for k in tgt.keys() & src.keys() if src[k] != tgt[k])
    if not (missing or extra or differ):
        if source.model_name != model_name:
            logging.warning(
                "init_from holds %s, the config names %r; their variables match.",
                source.model_name,
                model_name,
            )
        return

    def listing(keys: list[str], show: Any = str) -> str:
        shown = "; ".join(show(k) for k in keys[:8])
        return shown + (f"; ... ({len(keys) - 8} more)" if len(keys) > 8 else "")

    lines = [
        f"init_from={source.path!r} holds {source.description}, which does not fit the configured "
        f"model {model_name!r}" + (f" (its head {HEAD!r} excepted)" if new_head else "") + ":"
    ]
    if missing:
        lines.append(f"{len(missing)} variable(s) missing from the checkpoint: {listing(missing)}")
    if extra:
        lines.append(f"{len(extra)} variable(s) not in the model: {listing(extra)}")
    if differ:
        shapes = listing(differ, lambda k: f"{k} {src[k]} in the checkpoint, {tgt[k]} in the model")
        lines.append(f"{len(differ)} shape(s) differ: {shapes}")
    if all(_is_head(k) for k in missing + extra + differ):
        advice = f"Keep finetune.new_head=True to give the model a new {HEAD!r} for its classes"
    else:
        advice = (
            "Set --config.model.name (and model.kwargs) to the checkpoint's architecture "
            f"({source.model_name!r})"
        )
    raise ConfigError("\n  - ".join(lines) + f"\n{advice}; nothing was written.")


def frozen_stage_count(finetune: ml_collections.ConfigDict, num_stages: int) -> int:
    """How many stages (after the stem) the config freezes: 0, frozen_stages or all."""
    if finetune.freeze == "backbone":
        return num_stages
    if finetune.freeze == "stages":
        return int(finetune.frozen_stages)
    return 0


def param_group(name: str, *, frozen_stages: int, num_stages: int) -> str:
    """'head', 'backbone' (trainable) or 'frozen' for a top-level parameter name of ResNet."""
    if name == HEAD:
        return "head"
    if frozen_stages == 0:
        return "backbone"
    stage = _STAGE.fullmatch(name)
    if stage:
        return "frozen" if int(stage[1]) <= frozen_stages else "backbone"
    if name == "post_bn":  # v2: the last BN belongs to the last stage.
        return "frozen" if frozen_stages >= num_stages else "backbone"
    return "frozen"  # The stem: conv1, bn1, stem_conv*, stem_bn*.


def param_labels(params: Any, *, frozen_stages: int, num_stages: int) -> dict[str, Any]:
    """The params tree with each leaf replaced by its group (see ``param_group``)."""

    def label(name: str, sub: Any) -> Any:
        group = param_group(name, frozen_stages=frozen_stages, num_stages=num_stages)
        return jax.tree.map(lambda _: group, sub)

    return {name: label(name, sub) for name, sub in params.items()}


def create_finetune_optimizer(
    opt: ml_collections.ConfigDict,
    learning_rate: optax.Schedule,
    *,
    frozen_stages: int,
    num_stages: int,
    backbone_lr_multiplier: float,
) -> optax.GradientTransformation:
    """The configured optimizer on the head, its updates scaled by ``backbone_lr_multiplier``
    on the trainable backbone, and no update at all (weight decay included) on frozen
    parameters. Gradient clipping, if any, sees the global norm over all of them."""
    opt = ml_collections.ConfigDict(opt.to_dict())
    clip = float(opt.grad_clip_norm or 0.0)
    opt.grad_clip_norm = 0.0
    inner = optim.create_optimizer(opt, learning_rate)
    backbone = inner
    if backbone_lr_multiplier != 1.0:
        backbone = optax.chain(inner, optax.scale(backbone_lr_multiplier))
    labels = functools.partial(param_labels, frozen_stages=frozen_stages, num_stages=num_stages)
    tx = optax.partition(
        {"head": inner, "backbone": backbone, "frozen": optax.set_to_zero()}, labels
    )
    return optax.chain(optax.clip_by_global_norm(clip), tx) if clip > 0 else tx


def load_source(config: ml_collections.ConfigDict, model: ResNet) -> PretrainedWeights | None:
    """The ``init_from`` weights (None without), checked to fit ``model`` before anything is
    written; the head is exempt when ``finetune.new_head`` replaces it."""
    if not config.init_from:
        return None
    source = load_pretrained(config.init_from)
    size = int(config.data.image_size)
    x = jnp.zeros((1, size, size, model.in_channels), jnp.float32)
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
    check_weights_fit(
        source, target, model_name=config.model.name, new_head=config.finetune.new_head
    )
    return source


def _host(x: Any) -> np.ndarray:
    """One copy of a replicated leaf as NumPy (the first local shard of a global array)."""
    if isinstance(x, jax.Array):
        return np.asarray(x.addressable_shards[0].data)
    return np.asarray(x)


def merge(source: Any, target: Any, *, new_head: bool) -> dict[str, Any]:
    """``target``'s tree with every leaf taken from ``source`` (cast to the target dtype),
    except the head's when ``new_head``; both trees are keyed as the model names them."""
    src = traverse_util.flatten_dict(dict(source))
    out = {}
    for key, leaf in traverse_util.flatten_dict(dict(target)).items():
        keep = new_head and key[0] == HEAD
        out[key] = _host(leaf) if keep else np.asarray(src[key], dtype=leaf.dtype)
    return traverse_util.unflatten_dict(out)


def initialize(
    config: ml_collections.ConfigDict,
    state: TrainState,
    parallel: par.DataParallel,
    source: PretrainedWeights | None,
) -> TrainState:
    """The (replicated) fresh state with the source's parameters and BN statistics, and a new
    head if configured; a state resumed from the workdir (step > 0) comes back unchanged."""
    if source is None:
        return state
    host = parallel.unreplicate(state)
    if int(_host(host.step)) > 0:
        logging.info("Resumed from the workdir's checkpoint; init_from is not read again.")
        return state
    new_head = bool(config.finetune.new_head)
    params = merge(source.variables["params"], host.params, new_head=new_head)
    stats = merge(source.variables.get("batch_stats", {}), host.batch_stats, new_head=new_head)
    logging.info("Initialised from %s (new head: %s).", source.description, new_head)
    return state.replace(params=parallel.replicate(params), batch_stats=parallel.replicate(stats))
