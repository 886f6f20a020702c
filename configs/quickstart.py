"""The quickstart: a small ResNet on scikit-learn's handwritten digits, offline, in minutes.

1,797 real 8x8 digit scans ship with scikit-learn, so nothing is downloaded; they are upscaled
to 24x24 RGB and split 80/20 per class (1,438 train / 359 validation). ResNet-20 (0.27 M
params) trains for 10 epochs on a 2-core CPU in about two minutes to ~99% validation top-1
(>= 97% is checked in CI) and leaves a checkpoint, metrics.jsonl, TensorBoard events, the
config and curves.png in the workdir.

    python train.py --config=configs/quickstart.py --workdir=/tmp/quickstart
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet20"
    config.model.zero_init_last_bn = False  # Zero-init slows the first epochs of a tiny run.
    config.dtype = "float32"

    config.data.dataset = "digits"
    config.data.image_size = 24
    config.data.train_preprocess = "cifar_crop"  # Pad 4 pixels, random 24x24 crop.
    config.data.eval_preprocess = "resize"
    config.data.flip = False  # Mirrored digits are other glyphs.
    config.data.mean = (0.5, 0.5, 0.5)
    config.data.std = (0.5, 0.5, 0.5)
    config.data.private_threads = 0

    config.batch_size = 32
    config.eval_batch_size = 120  # 359 = 2 x 120 + 119: the last batch is padded and masked.
    config.num_epochs = 10.0

    config.optimizer.base_learning_rate = 0.8  # 0.1 at batch 32.
    config.optimizer.warmup_epochs = 1.0
    config.optimizer.lr_schedule = "cosine"
    config.optimizer.weight_decay = 5e-4
    config.label_smoothing = 0.1

    config.log_every_steps = 11  # 4 progress updates per epoch of 44 steps.
    config.eval_every_steps = 0  # Every epoch: a validation curve for the plot.
    config.checkpoint_every_steps = 0
    config.keep_checkpoints = 2
    return config
