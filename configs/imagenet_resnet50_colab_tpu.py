"""ResNet-50 on one Colab TPU v5e chip (16 GB HBM, JAX sees one device).

Imagenette (10 ImageNet classes, ~9.5k training images) at 224 px fits a Colab session:
global batch 256, bf16, SGD + Nesterov, cosine over 40 epochs, label smoothing 0.1.
Point it at ImageNet with ``--config.data.dataset=imagenet2012`` if you have it prepared.

fast.ai's Imagenette archive (imagenette2-320.tgz, JPEGs in class folders) needs no TensorFlow;
the Colab notebook trains on it this way:

    python train.py --config=configs/imagenet_resnet50_colab_tpu.py --workdir=/content/rn50 \
        --config.data.dataset=folder --config.data.folder=/content/data/imagenette2-320/train \
        --config.data.eval_folder=/content/data/imagenette2-320/val

As written it reads TFDS's ``imagenette/320px-v2``, the same 320 px variant (0.3 GB; TFDS's
default variant is the 1.5 GB full-size one). ``--config.data.download=True`` prepares
it the first time, with TensorFlow Datasets.
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet50"
    config.dtype = "bfloat16"

    config.data.dataset = "imagenette/320px-v2"
    config.data.image_size = 224
    config.data.train_preprocess = "inception_crop"
    config.data.eval_preprocess = "center_crop"
    config.data.image_dtype = "uint8"  # Pixels to the devices (4x fewer bytes), normalised there.

    config.batch_size = 256
    config.eval_batch_size = 256
    config.num_epochs = 40.0

    config.optimizer.base_learning_rate = 0.1
    config.optimizer.warmup_epochs = 2.0
    config.optimizer.lr_schedule = "cosine"
    config.optimizer.weight_decay = 5e-5
    config.label_smoothing = 0.1

    config.log_every_steps = 20
    config.checkpoint_every_steps = 0  # Every epoch: Colab sessions end without warning.
    config.keep_checkpoints = 2
    return config
