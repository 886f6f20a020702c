"""CIFAR-10 ResNet-20/32/44/56/110, the recipe of He et al. 2015 (Section 4.2, Table 6).

Batch 128, SGD momentum 0.9 (not Nesterov), lr 0.1 divided by 10 at 32k and 48k
iterations, 64k iterations in all, weight decay 1e-4, 4-pixel padding + random 32x32 crop +
horizontal flip, option A (zero-padding) shortcuts. ResNet-110 warms up for ~400 iterations,
as the paper does. Paper test errors: 8.75 / 7.51 / 7.17 / 6.97 / 6.43 %.

    python train.py --config=configs/cifar10_resnet.py:resnet56 --workdir=/tmp/cifar_rn56
    python train.py --config=configs/cifar10_resnet.py --config.model.name=resnet110 ...

CIFAR-10 comes from TFDS: add ``--config.data.download=True`` to the first run to download it
(160 MB), or prepare it beforehand with
``python -m resnet_jax.data.prepare cifar10 --data_dir=DIR``.
"""

import ml_collections

from configs import default

DEPTHS = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """``arg`` picks the depth ('resnet56' or '56'); default ResNet-20."""
    name = (
        "resnet20" if not arg else (arg if arg.startswith(("resnet", "plain")) else f"resnet{arg}")
    )
    config = default.get_config()
    config.model.name = name
    config.model.zero_init_last_bn = False
    config.dtype = "float32"

    config.data.dataset = "cifar10"
    config.data.image_size = 32
    config.data.train_preprocess = "cifar_crop"
    config.data.eval_preprocess = "resize"
    config.data.mean = (0.4914, 0.4822, 0.4465)
    config.data.std = (0.2470, 0.2435, 0.2616)

    config.batch_size = 128
    config.eval_batch_size = 1000
    config.num_train_steps = 64_000

    config.optimizer.name = "sgd"
    config.optimizer.base_learning_rate = 0.2  # 0.1 at batch 128.
    config.optimizer.nesterov = False
    config.optimizer.weight_decay = 1e-4
    config.optimizer.lr_schedule = "step"
    config.optimizer.lr_boundaries_steps = (32_000, 48_000)
    config.optimizer.lr_decay_factor = 0.1
    config.optimizer.warmup_epochs = 1.0 if name.endswith("110") else 0.0

    config.log_every_steps = 100
    config.eval_every_steps = 2_000
    config.checkpoint_every_steps = 4_000
    return config
