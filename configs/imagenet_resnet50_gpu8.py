"""ResNet-50 on ImageNet, one host with 8 GPUs: 90 epochs, ~76.5% top-1.

Goyal et al. 2017 and the Flax ImageNet example: global batch 1024 (128 per GPU), SGD with
Nesterov momentum 0.9, peak lr 0.1 x 1024/256 = 0.4 after 5 warmup epochs, cosine decay,
weight decay 1e-4 on kernels, zero-init last BN, bf16 compute with float32 params, sync BN.

    python train.py --config=configs/imagenet_resnet50_gpu8.py --workdir=/ckpt/rn50 \\
        --config.data.data_dir=/data/tfds
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet50"
    config.dtype = "bfloat16"

    config.data.dataset = "imagenet2012"
    config.data.image_size = 224
    config.data.train_preprocess = "inception_crop"
    config.data.eval_preprocess = "center_crop"
    config.data.image_dtype = "uint8"  # Pixels to the devices (4x fewer bytes), normalised there.

    config.batch_size = 1024
    config.eval_batch_size = 1024
    config.num_epochs = 90.0

    config.optimizer.name = "sgd"
    config.optimizer.base_learning_rate = 0.1
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.lr_schedule = "cosine"
    config.optimizer.weight_decay = 1e-4

    config.parallelism = "shard_map"
    config.bn_group_size = 0  # All 8 GPUs: sync BN over the global batch.
    config.log_every_steps = 100
    config.checkpoint_every_steps = 0  # Every epoch (1251 steps).
    return config
