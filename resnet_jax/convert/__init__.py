"""Reference checkpoints -> ``{'params', 'batch_stats'}``: torchvision, timm, Keras Applications.

PyTorch, timm and Keras are imported only when a function needs them; reading Keras weight
files needs h5py alone.

    from resnet_jax.convert import from_torchvision, save_converted
    variables = from_torchvision("resnet50.pth", "resnet50")
"""

from resnet_jax.convert.common import CheckpointMismatchError
from resnet_jax.convert.keras import KerasLayerOrderError, from_keras
from resnet_jax.convert.reference import WeightsDownloadError
from resnet_jax.convert.timm import from_timm
from resnet_jax.convert.torch_compat import (
    UnsafeCheckpointError,
    import_timm,
    import_torchvision,
    load_torch_file,
)
from resnet_jax.convert.torchvision import from_torchvision, to_torchvision
from resnet_jax.weights import save_converted

__all__ = [
    "CheckpointMismatchError",
    "KerasLayerOrderError",
    "UnsafeCheckpointError",
    "WeightsDownloadError",
    "from_keras",
    "from_timm",
    "from_torchvision",
    "import_timm",
    "import_torchvision",
    "load_torch_file",
    "save_converted",
    "to_torchvision",
]
