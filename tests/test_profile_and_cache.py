"""Restarts without recompiling (JAX's persistent compilation cache) and the profiling switch."""

import json
import subprocess
import sys

import jax
import numpy as np
import pytest
from recipes import REPO
from recipes import tiny_synthetic_config as tiny_config
from test_faults import host_leaves

from resnet_jax.training import compile_cache, train_and_evaluate
from resnet_jax.training.profile import StepProfiler, parse_steps
from resnet_jax.training.validate import ConfigError, check_config


def test_profile_steps_parse_first_and_last_inclusive():
    assert parse_steps("") is None
    assert parse_steps("3:5") == (3, 5)
    assert parse_steps("7") == (7, 7)


@pytest.mark.parametrize("bad", ["0:2", "5:3", "a:b", "1:2:3", "-1"])
def test_bad_profile_steps_are_refused_naming_the_field(bad):
    with pytest.raises(ConfigError, match=r"profile_steps=.*'first:last'"):
        check_config(tiny_config(profile_steps=bad), num_devices=8, process_count=1)


def test_cache_dir_auto_is_the_user_cache_and_empty_is_off(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert str(compile_cache.cache_directory("auto")) == str(tmp_path / "resnet_jax" / "jax")
    assert compile_cache.cache_directory("") is None
    assert str(compile_cache.cache_directory("gs://bucket/cache")) == "gs://bucket/cache"


def test_enable_points_jax_at_the_directory_and_back(tmp_path):
    before = jax.config.jax_compilation_cache_dir
    try:
        assert compile_cache.enable(str(tmp_path / "c")) is not None
        assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
        assert (tmp_path / "c").is_dir()
        assert compile_cache.enable("") is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        compile_cache.enable(before or "")


def test_multi_process_cpu_runs_compile_afresh(monkeypatch, tmp_path):
    """XLA:CPU executables with cross-process collectives hang when loaded from the cache."""
    before = jax.config.jax_compilation_cache_dir
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    try:
        assert compile_cache.enable(str(tmp_path / "c")) is None
        assert jax.config.jax_compilation_cache_dir is None
    finally:
        monkeypatch.undo()
        compile_cache.enable(before or "")


@pytest.mark.usefixtures("fast_compile")
def test_profiled_run_writes_a_trace_and_ends_bitwise_as_an_unprofiled_run(tmp_path):
    plain = train_and_evaluate(tiny_config(keep_checkpoints=0), str(tmp_path / "plain"))
    profiled = train_and_evaluate(
        tiny_config(keep_checkpoints=0, profile_steps="2:3"), str(tmp_path / "profiled")
    )
    traces = list((tmp_path / "profiled" / "profile").rglob("*.xplane.pb"))
    assert len(traces) == 1 and traces[0].stat().st_size > 1000
    assert not (tmp_path / "plain" / "profile").exists()
    for a, b in zip(host_leaves(plain["state"]), host_leaves(profiled["state"]), strict=True):
        np.testing.assert_array_equal(a, b)


def test_second_start_loads_the_train_step_from_the_cache(tmp_path):
    """Two fresh processes build the same train step on one cache directory: the first stores
    it, the second loads it (JAX's persistent-cache hit events)."""
    out = tmp_path / "results"
    command = [
        sys.executable, "-m", "benchmarks.compile_cache", "--model=resnet20", "--image-size=8",
        "--batch-size=2", "--num-classes=10", f"--out={out}",
    ]  # fmt: skip
    subprocess.run(command, cwd=REPO, check=True, capture_output=True, timeout=600)
    (record,) = out.glob("compile-cache-cpu-*.json")
    result = json.loads(record.read_text())
    assert result["first"]["persistent_cache_hits"] == 0
    assert result["second"]["persistent_cache_hits"] >= 1
    assert result["first"]["compile_seconds"] > 0 and result["second"]["compile_seconds"] > 0


def test_a_run_resumed_inside_the_span_traces_its_remaining_steps_once(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(jax.profiler, "start_trace", lambda d: calls.append(("start", d)))
    monkeypatch.setattr(jax.profiler, "stop_trace", lambda: calls.append(("stop",)))
    profiler = StepProfiler("3:6", tmp_path)
    for step in range(5, 10):  # resumed from a checkpoint at step 4
        profiler.before(step)
        profiler.after(step, None)
    assert calls == [("start", str(tmp_path / "profile")), ("stop",)]
