"""No XLA compilation while a run trains: its train step (and its scan of several steps), the
epochs' permutations and the evaluators are compiled before the loop, and the records,
evaluations and checkpoints compile nothing, on one device or eight."""

import jax
import pytest
from conftest import convnet_config

from cv_jax.config import model_section
from cv_jax.training import hooks, train
from cv_jax.training.loop import Hook, Loop

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"  # every compilation, cached too


class Step(Hook):
    """Notes the loop's step after every call (without cutting calls short)."""

    def __init__(self, steps: list):
        self.steps = steps

    def due(self, loop: Loop) -> bool:
        return True

    def act(self, loop: Loop) -> None:
        self.steps.append(loop.step)

    def next_due(self, loop: Loop) -> int:
        return loop.end


@pytest.mark.parametrize("num_devices, steps_per_call", [(1, 1), (8, 1), (8, 3)])
def test_a_run_compiles_nothing_once_its_loop_has_started(num_devices, steps_per_call,
                                                          tiny_folder, cache_dir, tmp_path,
                                                          monkeypatch):
    """12 steps, evaluated every 3 (with the EMA weights), checkpointed every 4, logged every 3;
    with 3 steps per call, the calls end at 3, 4, 5, 6, 7, 8, 9 and 12."""
    config = convnet_config(tiny_folder, cache_dir, num_devices=num_devices, num_steps=12,
                            log_every_steps=3, eval_every_epochs=0.5, checkpoint_every_steps=4,
                            ema_decay=0.9, nonfinite="skip", steps_per_call=steps_per_call)
    config.model = model_section("convnet", layers="conv:8,pool:max:2", fc="", batch_norm=True)
    steps, compiled_at = [], []  # the loop's steps so far at each compilation
    loop_run = hooks.run

    def run(program, state, start, end, run_hooks, stop="", **kwargs):
        steps.append(start)
        return loop_run(program, state, start, end, [Step(steps), *run_hooks], stop, **kwargs)

    def listener(event, duration, **kwargs):
        if event == COMPILE_EVENT:
            compiled_at.append(steps[-1] if steps else None)

    monkeypatch.setattr(hooks, "run", run)
    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        results = train.train_and_evaluate(config, str(tmp_path))
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    assert results["steps"] == 12
    assert steps == [0, 3, 4, 5, 6, 7, 8, 9, 12] if steps_per_call == 3 else list(range(13))
    assert compiled_at and set(compiled_at) == {None}, compiled_at  # all before the loop
