"""Input pipelines: TFDS/tf.data for training and eval, digits, image folders, synthetic data.

Importing this package does not import TensorFlow; the pipeline imports it when it builds one.
"""

from resnet_jax.data.digits import write_digits_folder
from resnet_jax.data.folder import FolderIndex, scan_folder
from resnet_jax.data.pipeline import (
    DatasetInfo,
    create_eval_iterator,
    create_train_iterator,
    default_data_config,
    get_dataset_info,
)
from resnet_jax.data.presets import PRESETS, Preset, get_preset, normalize

__all__ = [
    "PRESETS",
    "DatasetInfo",
    "FolderIndex",
    "Preset",
    "create_eval_iterator",
    "create_train_iterator",
    "default_data_config",
    "get_dataset_info",
    "get_preset",
    "normalize",
    "scan_folder",
    "write_digits_folder",
]
