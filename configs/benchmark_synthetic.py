"""Training throughput on synthetic data: no input pipeline, no TensorFlow, no files.

ResNet-50 at 224 px in bf16 with random images; measures images/s and step time of the real
train step (compile excluded from the steady-state numbers in metrics.jsonl). No evaluation,
no checkpoint. Scale the batch with the devices: ``--config.batch_size=2048``.

    python train.py --config=configs/benchmark_synthetic.py --workdir=/tmp/bench
"""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
    config = default.get_config()
    config.model.name = "resnet50"
    config.dtype = "bfloat16"

    config.data.dataset = "synthetic"
    config.data.image_size = 224
    config.data.image_dtype = "uint8"  # As the ImageNet recipes ship them.

    config.batch_size = 256
    config.eval_batch_size = 256
    config.num_train_steps = 200
    config.optimizer.warmup_epochs = 0.0

    config.log_every_steps = 20
    config.eval_every_steps = -1
    config.keep_checkpoints = 0
    config.plot = False
    return config
