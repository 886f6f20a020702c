"""Test-wide settings: eight simulated CPU devices, so data-parallel code runs as on a host
with eight accelerators. Must happen before any JAX backend is initialised."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


@pytest.fixture(scope="module")
def fast_compile():
    """Behaviour, not speed, is under test: compile with XLA's optimisations off."""
    before = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.fixture
def no_compile(monkeypatch):
    """Fails the test if the run gets as far as building (compiling) the train state: for
    errors that must come before any work."""
    from resnet_jax.training import loop

    def refuse(*args, **kwargs):
        raise AssertionError("reached model initialisation; the error should come first")

    monkeypatch.setattr(loop, "create_train_state", refuse)


@pytest.fixture(scope="module")
def gcs(tmp_path_factory):
    """A GCS API server on localhost (gcp-storage-emulator, see gcs_emulator.py) holding the
    empty bucket ``gs://bucket``; the clients point at it through their settings: gcsfs and
    google-cloud-storage read STORAGE_EMULATOR_HOST, array_record CLOUD_STORAGE_EMULATOR_ENDPOINT,
    tensorstore (orbax's arrays) TENSORSTORE_GCS_HTTP_URL and GOOGLE_AUTH_TOKEN_FOR_TESTING.
    Subprocesses inherit them."""
    import socket
    import subprocess
    import sys
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
    server = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "gcs_emulator.py"), "start"]
        + ["--port", str(port)]
        + ["--in-memory", "--default-bucket", "bucket", "--quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    env = {
        "STORAGE_EMULATOR_HOST": url,
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": url,  # google-cloud-cpp's: array_record's reader.
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore sends it; the server ignores it.
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # No bucket-layout API in the emulator.
        "GOOGLE_CLOUD_PROJECT": "test",
    }
    before = {k: os.environ.get(k) for k in env}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the GCS emulator did not start: {log.name}") from None
                time.sleep(0.1)
        os.environ.update(env)
        import gcsfs

        gcsfs.GCSFileSystem.clear_instance_cache()  # Cached clients know an older server.
        yield "gs://bucket"
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.terminate()
        server.wait(timeout=30)
        log.close()
