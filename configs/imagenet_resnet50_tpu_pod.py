"""ResNet-50 on ImageNet on a TPU pod slice: large batch with LARS, in ~40 epochs.

The MLPerf-style recipe (You et al. 2017; Kumar et al. 2019): global batch 4096, LARS
(momentum 0.9, trust coefficient 0.001, no adaptation or decay for BN and biases), 5 warmup
epochs then polynomial (power 2) decay, label smoothing 0.1, bf16. BatchNorm statistics over
groups of devices: 2 devices x 32 images = 64 images per group on a 128-chip slice
(v4-256, v5e-128). Adjust bn_group_size so that group size x per-device batch is about 64.

Every host runs the same command; jax.distributed.initialize() finds the pod. The workdir
must be a shared filesystem path every host sees (gs:// workdirs are not supported yet):

    python train.py --config=configs/imagenet_resnet50_tpu_pod.py --workdir=/mnt/shared/rn50 \\
        --config.data.data_dir=/mnt/shared/tfds
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet50"
    config.dtype = "bfloat16"
    config.multihost = True

    config.data.dataset = "imagenet2012"
    config.data.image_size = 224
    config.data.train_preprocess = "inception_crop"
    config.data.eval_preprocess = "center_crop"
    config.data.image_dtype = "uint8"  # Pixels to the devices (4x fewer bytes), normalised there.

    config.batch_size = 4096
    config.eval_batch_size = 4096
    config.num_epochs = 40.0

    config.optimizer.name = "lars"
    config.optimizer.base_learning_rate = 0.675  # Peak 10.8 at batch 4096.
    config.optimizer.warmup_epochs = 5.0
    config.optimizer.lr_schedule = "polynomial"
    config.optimizer.polynomial_power = 2.0
    config.optimizer.end_learning_rate = 0.0
    config.optimizer.weight_decay = 5e-5
    config.optimizer.nesterov = False
    config.optimizer.lars_trust_coefficient = 0.001
    config.label_smoothing = 0.1

    config.parallelism = "shard_map"
    config.bn_group_size = 2
    config.log_every_steps = 100
    config.checkpoint_every_steps = 1000
    return config
