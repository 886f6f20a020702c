"""Trains a ResNet as a config file says: ``python train.py --config=configs/x.py --workdir=DIR``.

The same command as ``resnet-jax-train`` and ``python -m resnet_jax.training``; its flags and
exit statuses are described in ``resnet_jax/training/__main__.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # This checkout's resnet_jax.

from resnet_jax.training.__main__ import run  # noqa: E402

if __name__ == "__main__":
    run(os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))
