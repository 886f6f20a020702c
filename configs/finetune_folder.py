"""Fine-tunes ResNet-50 on a folder of your images (one subfolder per class) from converted or
trained weights, with a new head for your classes.

The backbone is frozen by default (its BN statistics too): only the head learns, which is fast
and enough for classes close to ImageNet's. Inputs are preprocessed as the source weights were
(``data.preset='init_from'``); 10% of each class is held out for validation unless
``data.eval_folder`` is given. The workdir gets curves.png, confusion_matrix.png and a
checkpoint that ``python -m resnet_jax.predict IMAGES --checkpoint WORKDIR`` uses.

    python -m resnet_jax.verify --source torchvision --model resnet50 \\
        --weights IMAGENET1K_V2 --save checkpoints/resnet50_tv2
    python train.py --config=configs/finetune_folder.py --workdir=workdir/pets \\
        --config.init_from=checkpoints/resnet50_tv2 --config.data.folder=~/pets
    # Train layer3, layer4 and the head; the stem, layer1 and layer2 stay frozen:
        --config.finetune.freeze=stages --config.finetune.frozen_stages=2
    # Train everything, the backbone at backbone_lr_multiplier (0.1) of the head's rate:
        --config.finetune.freeze=none
    # A TFDS dataset instead of a folder:
        --config.data.dataset=tf_flowers --config.data.train_split='train[:90%]' \\
        --config.data.eval_split='train[90%:]'
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet50"  # Must match the architecture of init_from.
    config.model.zero_init_last_bn = False  # Every BN scale comes from the source anyway.
    config.dtype = "float32"  # 'bfloat16' on TPUs and recent GPUs.

    config.init_from = ""  # Required: a converted checkpoint or a training workdir.
    config.finetune.freeze = "backbone"
    config.finetune.frozen_stages = 0
    config.finetune.backbone_lr_multiplier = 0.1  # With freeze 'none' or 'stages'.
    config.finetune.new_head = True

    config.data.dataset = "folder"
    config.data.folder = ""  # Required: <folder>/<class>/<image>.
    config.data.eval_folder = ""  # Optional: the same class subfolders, for validation.
    config.data.eval_fraction = 0.1  # Held out of `folder` when there is no eval_folder.
    config.data.image_size = 224
    config.data.preset = "init_from"  # Normalisation, interpolation and crop of the source.
    config.data.train_preprocess = "inception_crop"
    config.data.min_area = 0.25  # Milder crops than ImageNet training: small datasets.
    config.data.eval_preprocess = "center_crop"
    config.data.private_threads = 0

    config.batch_size = 64
    config.eval_batch_size = 64
    config.num_epochs = 5.0

    config.optimizer.base_learning_rate = 0.1  # Head; peak = 0.1 * 64 / 256 = 0.025.
    config.optimizer.warmup_epochs = 0.5
    config.optimizer.lr_schedule = "cosine"
    config.optimizer.weight_decay = 1e-4
    config.label_smoothing = 0.1

    config.log_every_steps = 10
    config.eval_every_steps = 0  # Every epoch.
    config.checkpoint_every_steps = 0
    config.keep_checkpoints = 2
    return config
