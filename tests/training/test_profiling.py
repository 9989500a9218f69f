"""training.profile_steps: a JAX profiler trace of the chosen train steps in workdir/profile/,
named in the log; which calls the window covers; nothing traced or annotated when it is off;
bad values refused naming the key."""

import contextlib
import glob
import gzip
import json
import os

import jax
import pytest
from conftest import convnet_config

from cv_jax.config import ConfigError, validate
from cv_jax.training import profiling, train
from cv_jax.training.loop import Loop
from cv_jax.training.profiling import StepProfiler, profile_window


def trace_files(workdir, pattern):
    return glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*", pattern))


def step_events(workdir):
    """The arguments of the ``train`` step events of the run's trace (its Chrome trace JSON)."""
    [path] = trace_files(workdir, "*.trace.json.gz")
    with gzip.open(path) as f:
        events = json.load(f)["traceEvents"]
    return [e.get("args", {}) for e in events if e.get("name") == "train"]


def test_profile_steps_writes_a_trace_of_those_steps_and_the_log_names_it(
        tiny_folder, cache_dir, tmp_path, caplog):
    config = convnet_config(tiny_folder, cache_dir, profile_steps=(2, 2))
    with caplog.at_level("INFO", logger="cv_jax"):
        results = train.train_and_evaluate(config, str(tmp_path))
    assert results["finished"] and results["steps"] == 12
    [xplane] = trace_files(tmp_path, "*.xplane.pb")
    assert os.path.getsize(xplane) > 0
    [perfetto] = trace_files(tmp_path, "perfetto_trace.json.gz")
    profile = os.path.join(str(tmp_path), "profile")
    assert (f"Profiled train steps 2-3: {xplane}. View it with `xprof --port 8791 {profile}` "
            "(pip install xprof; then open http://localhost:8791, Trace Viewer) or "
            f"`tensorboard --logdir {profile}` (pip install tensorboard "
            "tensorboard-plugin-profile; the Profile tab), or open "
            f"{perfetto} in https://ui.perfetto.dev.") in caplog.text
    assert sorted(int(e["step_num"]) for e in step_events(tmp_path)) == [2, 3]  # per call
    # The step's phases name its ops (jax.named_scope), in the programs the trace holds.
    with open(xplane, "rb") as f:
        trace = f.read()
    for scope in (b"data", b"forward_backward", b"update"):
        assert b"(run)/" + scope + b"/" in trace, scope


def test_calls_of_several_steps_are_traced_whole(tiny_folder, cache_dir, tmp_path, caplog):
    # Calls of 2 steps from steps 0, 2, ...: steps 2-3 are in the calls of steps 1-2 and 3-4.
    config = convnet_config(tiny_folder, cache_dir, profile_steps=(2, 2), steps_per_call=2,
                            log_every_steps=4)
    with caplog.at_level("INFO", logger="cv_jax"):
        train.train_and_evaluate(config, str(tmp_path))
    assert "Profiled train steps 1-4 in 2 calls: " in caplog.text
    assert sorted((int(e["step_num"]), int(e["steps"])) for e in step_events(tmp_path)) == [
        (1, 2), (3, 2)]


def test_a_run_without_profile_steps_traces_and_annotates_nothing(
        tiny_folder, cache_dir, tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("profiler called with training.profile_steps=()")

    for name in ("start_trace", "stop_trace", "StepTraceAnnotation", "TraceAnnotation"):
        monkeypatch.setattr(jax.profiler, name, refuse)
    config = convnet_config(tiny_folder, cache_dir)
    assert config.training.profile_steps == ()
    assert train.train_and_evaluate(config, str(tmp_path))["finished"]
    assert not os.path.exists(tmp_path / "profile")


@pytest.mark.parametrize("steps", [(-1, 2), (0, 2), (2, 0), (2, -1), (2,), (1, 2, 3),
                                   (1.5, 2), (True, 2)])
def test_bad_profile_steps_are_config_errors_naming_the_key(steps, tiny_folder, cache_dir):
    config = convnet_config(tiny_folder, cache_dir, profile_steps=steps)
    with pytest.raises(ConfigError) as e:
        validate(config)
    assert str(e.value) == (
        f"config.training.profile_steps={steps!r} is invalid: use () (off) or (start, count): "
        "integers >= 1, start within the run")


def test_profile_steps_starting_after_the_run_is_a_config_error(
        tiny_folder, cache_dir, tmp_path):
    config = convnet_config(tiny_folder, cache_dir, profile_steps=(13, 1))  # 12 steps
    with pytest.raises(ConfigError) as e:
        train.train_and_evaluate(config, str(tmp_path))
    assert str(e.value) == ("config.training.profile_steps=(13, 1) starts after the run's last "
                            "step (12): use a start in 1..12")
    assert not os.path.exists(tmp_path / "checkpoints")
    config.training.profile_steps = (12, 5)  # the last step, and past the end: clamped
    assert profile_window(config, 12) == (12, 12)
    config.training.profile_steps = ()
    assert profile_window(config, 12) is None


class Recorder:
    """Stands in for jax.profiler: what the profiler asked of it, in order."""

    def __init__(self, monkeypatch):
        self.events = []
        monkeypatch.setattr(jax.profiler, "start_trace",
                            lambda directory, **kw: self.events.append(("start", directory)))
        monkeypatch.setattr(jax.profiler, "stop_trace", lambda: self.events.append(("stop",)))
        monkeypatch.setattr(jax, "block_until_ready",
                            lambda x: self.events.append(("wait", x)) or x)

        @contextlib.contextmanager
        def annotation(name, **kw):
            self.events.append((name, kw))
            yield

        monkeypatch.setattr(jax.profiler, "StepTraceAnnotation", annotation)


def calls(profiler, lengths, start=0):
    """Calls of ``lengths`` steps from step ``start`` through ``profiler``, as the loop makes
    them (the state after a call: its last step's number)."""
    loop = Loop(step=start, end=100, state=None)
    for steps in lengths:
        loop.steps = steps
        with profiler(loop):
            loop.state = f"state {loop.step + steps}"
        loop.step += steps


def test_the_profiler_traces_the_calls_that_take_any_step_of_its_window(monkeypatch, tmp_path):
    recorder = Recorder(monkeypatch)
    profiler = StepProfiler("dir", 3, 6)
    calls(profiler, [1, 1, 2, 2, 2, 1, 1])  # steps 1, 2, 3-4, 5-6, 7-8, 9, 10
    assert recorder.events == [
        ("start", "dir"), ("train", {"step_num": 3, "steps": 2}),
        ("train", {"step_num": 5, "steps": 2}), ("wait", "state 6"), ("stop",)]
    assert profiler.calls == [(3, 2), (5, 2)] and not profiler.tracing
    assert profiler.describe().startswith("Profiled train steps 3-6 in 2 calls: dir. ")

    recorder.events.clear()  # a call of 2 steps that passes the window's start and end
    calls(StepProfiler("dir", 4, 4), [1, 2, 2, 2], start=1)  # steps 2, 3-4, 5-6, 7-8
    assert recorder.events == [("start", "dir"), ("train", {"step_num": 3, "steps": 2}),
                               ("wait", "state 4"), ("stop",)]


def test_a_run_resumed_inside_the_window_traces_the_rest_and_a_loop_ending_early_stops_it(
        monkeypatch):
    recorder = Recorder(monkeypatch)
    profiler = StepProfiler("dir", 2, 5)
    calls(profiler, [1, 1], start=3)  # steps 4 and 5
    assert recorder.events == [("start", "dir"), ("train", {"step_num": 4}),
                               ("train", {"step_num": 5}), ("wait", "state 5"), ("stop",)]
    recorder.events.clear()
    calls(StepProfiler("dir", 2, 5), [1, 1], start=5)  # resumed after the window
    assert recorder.events == []
    profiler = StepProfiler("dir", 2, 5)
    calls(profiler, [1, 1])  # the loop stops after step 2
    profiler.close()
    assert recorder.events == [("start", "dir"), ("train", {"step_num": 2}), ("stop",)]
    profiler.close()  # stopped once
    assert recorder.events[-1] == ("stop",) and len(recorder.events) == 3


def test_the_profiler_is_off_by_default_and_in_processes_other_than_0(
        tiny_folder, cache_dir, monkeypatch):
    config = convnet_config(tiny_folder, cache_dir)
    assert StepProfiler.from_config(config, "w", 12) is None
    config.training.profile_steps = (2, 2)
    profiler = StepProfiler.from_config(config, "w", 12)
    assert (profiler.directory, profiler.first, profiler.last) == (
        os.path.join("w", profiling.PROFILE_DIR), 2, 3)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert StepProfiler.from_config(config, "w", 12) is None
