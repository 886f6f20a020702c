"""Parameter and multiply-add counts, the figures papers and model cards quote.

Multiply-adds count convolutions and the classifier (as torchvision's model cards and
fvcore do), computed from the shapes of every Conv/Dense call under ``jax.eval_shape``:
exact, and free of any real computation.

    python -m resnet_jax.models.summary resnet50 --image-size 224
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from resnet_jax.models.registry import create_model, list_models


@dataclasses.dataclass(frozen=True)
class Summary:
    name: str
    image_size: int
    params: int
    batch_stats: int
    macs: int
    output_shape: tuple[int, ...]

    def __str__(self) -> str:
        return (
            f"{self.name} at {self.image_size}x{self.image_size}: "
            f"{self.params:,} parameters (+{self.batch_stats:,} BN statistics), "
            f"{self.macs / 1e9:.2f} G multiply-adds, output {self.output_shape}"
        )


def count(tree) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


def summarize(
    model: nn.Module, image_size: int, name: str = "model", in_channels: int = 3
) -> Summary:
    """Counts parameters, BN statistics and multiply-adds for one image."""
    macs: list[int] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        module = context.module
        if context.method_name == "__call__" and isinstance(module, nn.Conv | nn.Dense):
            kernel = module.variables["params"]["kernel"]
            macs.append(math.prod(out.shape[:-1]) * math.prod(kernel.shape))
        return out

    x = jax.ShapeDtypeStruct((1, image_size, image_size, in_channels), jnp.float32)

    def run(x):
        variables = model.init(jax.random.key(0), x)
        with nn.intercept_methods(interceptor):
            return variables, model.apply(variables, x)

    variables, out = jax.eval_shape(run, x)
    return Summary(
        name,
        image_size,
        count(variables["params"]),
        count(variables.get("batch_stats", {})),
        sum(macs),
        tuple(out.shape),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Parameter and multiply-add counts.")
    parser.add_argument(
        "models",
        nargs="*",
        default=["resnet50"],
        help=f"model names ('all' for every one): {', '.join(list_models())}",
    )
    parser.add_argument(
        "--image-size",
        type=int,
        default=None,
        help="input resolution (default: 224, or 32 for CIFAR nets)",
    )
    args = parser.parse_args(argv)
    names = list_models() if args.models == ["all"] else args.models
    for name in names:
        model = create_model(name)
        size = args.image_size or (32 if model.stem == "cifar" else 224)
        print(summarize(model, size, name))


if __name__ == "__main__":
    main()
