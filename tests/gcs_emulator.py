"""gcp-storage-emulator, with each object's generation on its downloads as GCS sends it
(``x-goog-generation``): tensorstore's conditional reads of orbax's OCDBT manifests need it.

    python tests/gcs_emulator.py --port PORT   (then: start --in-memory --default-bucket bucket)
"""

import sys

from gcp_storage_emulator.handlers import objects

download = objects.download


def download_with_generation(request, response, storage, *args, **kwargs):
    download(request, response, storage, *args, **kwargs)
    try:
        obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
    except Exception:  # Missing objects: the download answered 404 already.
        return
    response["x-goog-generation"] = str(obj["generation"])
    response["x-goog-metageneration"] = str(obj["metageneration"])


objects.download = download_with_generation

if __name__ == "__main__":
    from gcp_storage_emulator.__main__ import main

    sys.exit(main())
