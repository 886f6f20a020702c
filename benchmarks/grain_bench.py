"""Grain vs tf.data input pipeline, side by side: resume cost, CPU per image, folder scans.

On a folder of photo-derived JPEGs (random crops of scikit-learn's two sample photographs,
resized to 500x375 and re-encoded at quality 90, like ImageNet's):
  (a) seconds from creating the training iterator to its first batch, fresh and resumed at
      10% and 90% of an epoch, for both pipelines on the same data (folder, and TFDS when
      ``--tfds_dir`` names a dataset prepared both as TFRecord and as ArrayRecord);
  (b) host CPU-ms per image (process CPU time, not wall time) of decode + Inception crop +
      flip to 224 uint8, in one process: Pillow (Grain's transform) vs tf.data's map;
  (a') seconds from starting a training process (``train_and_evaluate``, a small ResNet at
      224 px, batch 128) to the end of its first training step, fresh and resumed at 10% and
      90% of an epoch, per pipeline (the resumes restore the same checkpoint);
  (c) seconds to scan a folder of ``--scan_files`` files ('header' check), and to read the
      index back from the workdir cache.

    python -m benchmarks.grain_bench --root=/tmp/grain-bench --images=50000
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import multiprocessing
import os
import resource
import shutil
import time
from typing import Any

import numpy as np

from benchmarks import common


def write_photos(root: str, num_images: int, *, classes: int = 100, seed: int = 0) -> None:
    """``num_images`` 500x375 JPEGs cut from scikit-learn's sample photographs (kept if there)."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(a) for a in load_sample_images().images]
    rng = np.random.default_rng(seed)
    for i in range(num_images):
        path = os.path.join(root, f"c{i % classes:03d}", f"{i:06d}.jpg")
        if os.path.exists(path):
            continue
        os.makedirs(os.path.dirname(path), exist_ok=True)
        photo = photos[i % len(photos)]
        w, h = photo.size
        cw = int(w * rng.uniform(0.45, 1.0))
        ch = min(h, int(cw * 0.75))
        x, y = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        image = photo.resize((500, 375), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
        if rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        image.save(path, quality=90)


def write_scan_folder(root: str, num_files: int, classes: int = 1000) -> None:
    """``num_files`` small JPEG files in ``classes`` subfolders: a folder to scan, not to train."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 120, 40)).save(buffer, "JPEG")
    data = buffer.getvalue()
    for i in range(num_files):
        path = os.path.join(root, f"c{i % classes:04d}", f"{i:07d}.jpg")
        if not os.path.exists(path):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)


@functools.cache
def _bench_photos() -> type:
    """TFDS builder 'bench_photos': the files of ``BenchPhotos.folder``, stored as they are."""
    import tensorflow_datasets as tfds

    class BenchPhotos(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")
        folder = ""

        def _info(self) -> tfds.core.DatasetInfo:
            features = {
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=100),
            }
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict(features)
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            files = sorted(os.path.join(d, f) for d, _, fs in os.walk(self.folder) for f in fs)
            for i, f in enumerate(files):
                yield i, {"image": f, "label": int(os.path.basename(os.path.dirname(f))[1:])}

    return BenchPhotos


def build_tfds(photos: str, data_dir: str, file_format: str) -> str:
    """The photo folder as TFDS dataset 'bench_photos' in ``data_dir`` (TFRecord or
    ArrayRecord). Returns the data_dir."""
    builder_class = _bench_photos()
    builder_class.folder = photos
    builder = builder_class(data_dir=data_dir, file_format=file_format)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return data_dir


def _config(**fields: Any) -> Any:
    from resnet_jax.data import pipeline

    config = pipeline.default_data_config()
    config.update(
        {"eval_fraction": 0.0, "image_dtype": "uint8", "train_preprocess": "inception_crop"}
    )
    config.update(fields)
    return config


def _cpu() -> float:
    """CPU seconds of this process and its finished children."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def first_batch_seconds(kind: str, config: Any, batch: int, step: int, workdir: str) -> float:
    """Seconds from asking for the training iterator at ``step`` to holding its first batch."""
    from resnet_jax.data import grain_pipeline, pipeline

    if config.dataset == "folder":  # Index from the workdir, untimed: (c) measures scans.
        pipeline.folder_indices(config, cache_dir=workdir)
    start = time.perf_counter()
    if kind == "grain":
        it = grain_pipeline.create_train_iterator(
            config, global_batch_size=batch, seed=0, start_step=step, process_index=0,
            process_count=1, cache_dir=workdir,
        )  # fmt: skip
    else:
        it = pipeline.create_train_iterator(
            config, global_batch_size=batch, seed=0, start_step=step, process_index=0,
            process_count=1,
        )  # fmt: skip
    next(it)
    return time.perf_counter() - start


def _first_batch_child(queue: Any, *args: Any) -> None:
    queue.put(first_batch_seconds(*args))


def resume_times(
    configs: dict[str, Any], batch: int, workdir: str, epoch: int, prefix: str = ""
) -> dict[str, float]:
    """(a): fresh, 10% and 90% resumes, each in a new process (nothing warm), per pipeline."""
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for kind, config in configs.items():
        for name, fraction in (("fresh", 0.0), ("resume_10pct", 0.1), ("resume_90pct", 0.9)):
            queue = ctx.Queue()
            step = int(fraction * epoch) // batch
            proc = ctx.Process(
                target=_first_batch_child, args=(queue, kind, config, batch, step, workdir)
            )
            proc.start()
            out[f"{prefix}{kind}_{name}_s"] = round(queue.get(timeout=600), 3)
            print(f"{prefix}{kind}_{name}_s", out[f"{prefix}{kind}_{name}_s"], flush=True)
            proc.join()
    return out


def _step_config(kind: str, folder: str, eval_folder: str, batch: int, steps: int) -> Any:
    """A small ResNet trained for ``steps`` steps on ``folder`` by ``kind``'s pipeline."""
    import ml_collections

    from resnet_jax import spec

    config = spec.default_config()
    config.model.name = "resnet20"
    config.optimizer.warmup_epochs = 0.0
    config.model.kwargs = ml_collections.ConfigDict(
        {"stage_sizes": (1, 1, 1), "stage_widths": (4, 8, 8), "stem_width": 4}
    )
    data = {"dataset": "folder", "folder": folder, "eval_folder": eval_folder, "pipeline": kind}
    for key, value in {
        **data,
        "image_dtype": "uint8",
        "train_preprocess": "inception_crop",
    }.items():
        config.data[key] = value
    config.update(
        {"batch_size": batch, "eval_batch_size": batch, "num_train_steps": steps,
         "num_eval_steps": 1, "eval_every_steps": steps, "checkpoint_every_steps": steps,
         "keep_checkpoints": 1, "progress_bar": False, "tensorboard": False, "plot": False,
         "allow_config_change": True}
    )  # fmt: skip
    return config


def _train_child(config_json: str, workdir: str) -> None:
    import ml_collections

    from resnet_jax.training import train_and_evaluate

    train_and_evaluate(ml_collections.ConfigDict(json.loads(config_json)), workdir)


def first_step_times(photos: str, root: str, batch: int, epoch: int) -> dict[str, float]:
    """(a'): a new process per measurement, from its start to the end of a run of one step;
    checkpoints at 10% and 90% of an epoch come from training on a tiny folder of the same
    classes (the position a resume reads depends on the step only)."""
    ctx = multiprocessing.get_context("spawn")
    classes = len(os.listdir(photos))
    tiny = os.path.join(root, "tiny")  # Two photos for each class of ``photos``, same names.
    write_photos(tiny, 2 * classes, classes=classes)
    base = os.path.join(root, "steps")
    shutil.rmtree(base, ignore_errors=True)

    def run(config: Any, workdir: str) -> float:
        start = time.perf_counter()
        proc = ctx.Process(target=_train_child, args=(config.to_json(), workdir))
        proc.start()
        proc.join()
        if proc.exitcode:
            raise RuntimeError(f"The training run in {workdir} failed ({proc.exitcode}).")
        return time.perf_counter() - start

    from resnet_jax.data import pipeline

    index = os.path.join(base, "index")  # The folder's index, as a run leaves it in its workdir.
    pipeline.folder_indices(_step_config("grain", photos, tiny, batch, 1).data, cache_dir=index)
    out = {}
    for name, fraction in (("fresh", 0.0), ("resume_10pct", 0.1), ("resume_90pct", 0.9)):
        step = int(fraction * epoch) // batch
        saved = os.path.join(base, f"at{step}")
        shutil.copytree(index, saved)
        if step:  # Cheap steps: 16 px crops, decoded at 1/8 scale.
            config = _step_config("grain", tiny, tiny, batch, step)
            config.data.image_size = 16
            run(config, saved)
        for kind in ("tfdata", "grain"):
            workdir = os.path.join(base, f"{kind}{step}")
            shutil.copytree(saved, workdir)
            key = f"first_step_{kind}_{name}_s"
            out[key] = round(run(_step_config(kind, photos, tiny, batch, step + 1), workdir), 2)
            print(key, out[key], flush=True)
    return out


def cpu_ms_per_image(files: list[str], size: int = 224) -> dict[str, float]:
    """(b): decode + Inception crop + flip to ``size`` uint8, CPU-ms per image, one process;
    and its two parts alone: Pillow's full decode, and the crop-resize of decoded images."""
    import tensorflow as tf
    from PIL import Image

    from resnet_jax.data import grain_pipeline, preprocess

    config = _config(image_size=size, dataset="folder")
    datas = [open(f, "rb").read() for f in files]
    transform = grain_pipeline.TrainTransform(config)
    grain_s = decode_s = resize_s = 0.0
    for i, data in enumerate(datas):  # The parts interleaved with the whole: the same noise.
        t0 = time.process_time()
        transform(data, np.random.default_rng([0, i]))
        t1 = time.process_time()
        img = Image.open(io.BytesIO(data))
        img.load()
        t2 = time.process_time()
        box = grain_pipeline.inception_window(
            *img.size, np.random.default_rng([0, i]), config.min_area
        )
        t3 = time.process_time()
        img.resize((size, size), Image.Resampling.BILINEAR, box=box)
        t4 = time.process_time()
        grain_s, decode_s, resize_s = grain_s + t1 - t0, decode_s + t2 - t1, resize_s + t4 - t3
    grain_ms, decode_ms, resize_ms = (x * 1e3 / len(datas) for x in (grain_s, decode_s, resize_s))

    tf_transform = preprocess.make_train_transform(config)
    ds = tf.data.Dataset.from_tensor_slices(datas).enumerate()
    ds = ds.map(lambda i, d: tf_transform(d, preprocess.example_seed(0, i)))
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    ds = ds.with_options(options)
    for _ in ds.take(64):  # Warm up (tracing) outside the measurement.
        pass
    start = _cpu()
    for _ in ds:
        pass
    tf_ms = (_cpu() - start) * 1e3 / len(datas)
    return {
        "grain_cpu_ms_per_image": round(grain_ms, 3),
        "tfdata_cpu_ms_per_image": round(tf_ms, 3),
        "pillow_decode_cpu_ms_per_image": round(decode_ms, 3),
        "pillow_crop_resize_cpu_ms_per_image": round(resize_ms, 3),
    }


def scan_times(root: str, workdir: str) -> dict[str, float]:
    """(c): a first 'header' scan (written to the workdir), then a fresh process's cached read."""
    from resnet_jax.data import folder

    start = time.perf_counter()
    index = folder.cached_scan(root, check="header", cache_dir=workdir)
    first = time.perf_counter() - start
    folder._scanned.clear()  # As a new process (another host, a resumed run) would start.
    start = time.perf_counter()
    again = folder.cached_scan(root, check="header", cache_dir=workdir)
    cached = time.perf_counter() - start
    assert again.files == index.files
    return {"scan_files": len(index), "scan_s": round(first, 2), "scan_cached_s": round(cached, 2)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default="/tmp/grain-bench")
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--scan_files", type=int, default=100_000)
    parser.add_argument("--cpu_images", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--workers", type=int, default=-1)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--parts", default="scan,folder,tfds,steps,cpu", help="What to measure.")
    parser.add_argument("--tiny", action="store_true", help="A few images: checks it runs.")
    args = parser.parse_args(argv)
    if args.tiny:
        args.images, args.scan_files, args.cpu_images, args.batch = 40, 50, 8, 4
    photos, scans = os.path.join(args.root, "photos"), os.path.join(args.root, "scan")
    write_photos(photos, args.images)
    write_scan_folder(scans, args.scan_files)
    workdir = os.path.join(args.root, "workdir")
    shutil.rmtree(workdir, ignore_errors=True)
    record: dict[str, Any] = {"images": args.images, "batch": args.batch}
    parts = set(args.parts.split(","))
    if "scan" in parts:
        record.update(scan_times(scans, workdir))
    if "folder" in parts:
        config = _config(dataset="folder", folder=photos, workers=args.workers)
        configs = {"tfdata": config, "grain": config}
        record.update(resume_times(configs, args.batch, workdir, args.images, "folder_"))
    if "tfds" in parts:
        fields = {"dataset": "bench_photos", "workers": args.workers, "train_split": "train"}
        configs = {
            kind: _config(data_dir=build_tfds(photos, os.path.join(args.root, kind), fmt), **fields)
            for kind, fmt in (("tfdata", "tfrecord"), ("grain", "array_record"))
        }
        configs["tfdata"].pipeline = "tfdata"
        record.update(resume_times(configs, args.batch, workdir, args.images, "tfds_"))
    if "steps" in parts:
        record.update(first_step_times(photos, args.root, args.batch, args.images))
    if "cpu" in parts:
        files = sorted(os.path.join(d, f) for d, _, fs in os.walk(photos) for f in fs)
        record.update(cpu_ms_per_image(files[: args.cpu_images]))
    record["cores"] = common.usable_cores()
    table = "\n".join(
        ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in record.items()]
    )
    if not args.tiny:
        stem = f"grain-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        print("wrote", common.write_record(args.out, stem, record, table))
    print(table)
    return record


if __name__ == "__main__":
    main()
