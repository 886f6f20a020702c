"""JAX's persistent compilation cache: a restarted run loads its compiled steps from disk.

A preempted pod job or a rerun of the same command otherwise compiles the train step again
(tens of seconds for ResNet-50 on an accelerator, longer on a pod). The cache directory is
``config.compilation_cache_dir``: ``'auto'`` (default) is the user cache,
``$XDG_CACHE_HOME/resnet_jax/jax`` or ``~/.cache/resnet_jax/jax``; any local or ``gs://``
path works (a bucket shared by the hosts of a pod survives the VMs); ``''`` turns it off.
Cache keys cover the program, the compiler options, the devices and the jax version, so a
stale entry is never used for another program. Multi-process CPU runs (the localhost and
test clusters) compile afresh: an XLA:CPU executable with cross-process collectives hangs when
it is loaded from the cache (jax 0.10).
"""

from __future__ import annotations

import os

import jax
from absl import logging
from etils import epath

AUTO = "auto"
# Only programs that take longer than this to compile are stored (JAX's default is 1 s; the
# eval step of a small model compiles faster and would be recompiled on every restart).
MIN_COMPILE_SECONDS = 0.2


def cache_directory(setting: str) -> epath.Path | None:
    """The cache directory ``setting`` names ('auto': the user cache), or None when off."""
    if not setting:
        return None
    if setting == AUTO:
        root = epath.Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser()
        return root / "resnet_jax" / "jax"
    return epath.Path(setting)


def enable(setting: str) -> epath.Path | None:
    """Points JAX's persistent compilation cache at ``cache_directory(setting)``; returns it.

    Idempotent; a later call with another directory moves the cache there (JAX reads the
    directory once, when it first compiles, so the cache is reset on a change).
    """
    from jax.experimental.compilation_cache import compilation_cache

    directory = cache_directory(setting)
    if directory is not None and jax.process_count() > 1 and jax.default_backend() == "cpu":
        logging.warning("Compilation cache off: multi-process CPU runs compile afresh.")
        directory = None
    current = jax.config.jax_compilation_cache_dir
    wanted = None if directory is None else str(directory)
    if current == wanted:
        return directory
    if directory is not None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            logging.warning(
                "Compilation cache %s is not writable (%s): compiling afresh.", wanted, e
            )
            directory, wanted = None, None
    compilation_cache.reset_cache()
    jax.config.update("jax_compilation_cache_dir", wanted)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return directory
