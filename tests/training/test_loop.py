"""The training loop and a run's hooks, on a stand-in program: each epoch's permutation and
batch index, hooks acting at their steps, stops, and a run resumed from a checkpoint logging
what the run in one go logged."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import optax

from cv_jax.config import base_config
from cv_jax.training import hooks
from cv_jax.training.early_stopping import EarlyStopping
from cv_jax.training.loop import Hook, Loop, Program, run
from cv_jax.training.metrics import Progress
from cv_jax.training.plan import Plan


@dataclasses.dataclass(frozen=True)
class State:
    """A TrainState stand-in: the steps taken, and what the records and evaluations read."""

    step: int = 0
    opt_state: Any = optax.EmptyState()
    ema: dict = dataclasses.field(default_factory=dict)
    lr_scale: float = 1.0  # what a reduce-on-plateau update changes


def program(steps_per_epoch: int, calls: list | None = None, permuted: list | None = None,
            steps_per_call: int = 1, lengths: list | None = None, metric=None) -> Program:
    """A program whose step appends ``(permutation, index)`` to ``calls`` and whose loss is the
    step's number; ``permute`` appends the epochs it is asked for to ``permuted``. With
    ``steps_per_call`` > 1 it has ``train_steps`` too, their metrics stacked; each call appends
    its steps to ``lengths``. ``metric(value, step)`` makes a metric of a step."""

    def one(state, permutation, index):
        if calls is not None:
            calls.append((permutation, index))
        new = dataclasses.replace(state, step=state.step + 1)
        values = {"loss": new.step, "accuracy": index / 8, "learning_rate": 0.1,
                  "grad_norm": 1.0}
        make = metric or (lambda value, step: np.float32(value))
        return new, {k: make(v, new.step) for k, v in values.items()}

    def train_step(state, images, labels, permutation, index, teacher):
        if lengths is not None:
            lengths.append(1)
        return one(state, permutation, index)

    def train_steps(state, images, labels, permutation, index, teacher):
        if lengths is not None:
            lengths.append(steps_per_call)
        metrics = []
        for i in range(steps_per_call):
            state, m = one(state, permutation, index + i)
            metrics.append(m)
        return state, {k: np.stack([m[k] for m in metrics]) for k in metrics[0]}

    def permute(epoch):
        if permuted is not None:
            permuted.append(epoch)
        return f"epoch {epoch}"

    return Program(train_step, None, None, permute, steps_per_epoch,
                   steps_per_call=steps_per_call,
                   train_steps=train_steps if steps_per_call > 1 else None)


class Every(Hook):
    """Acts every ``n`` steps, noting the step; stops the loop at ``stop_at``."""

    def __init__(self, n: int, stop_at: int | None = None):
        self.n, self.stop_at, self.steps = n, stop_at, []

    def due(self, loop: Loop) -> bool:
        return loop.step % self.n == 0

    def next_due(self, loop: Loop) -> int:
        return (loop.step // self.n + 1) * self.n

    def act(self, loop: Loop) -> None:
        self.steps.append(loop.step)
        if loop.step == self.stop_at:
            loop.stop = f"asked at {loop.step}"


def test_the_loop_takes_each_epochs_permutation_and_calls_hooks_at_their_steps():
    calls, permuted = [], []
    every3, every4 = Every(3), Every(4)
    loop = run(program(4, calls, permuted), State(), 0, 10, [every3, every4])
    assert calls == [(f"epoch {s // 4}", s % 4) for s in range(10)]
    assert permuted == [0, 1, 2]  # once per epoch
    assert every3.steps == [3, 6, 9] and every4.steps == [4, 8]
    assert (loop.step, loop.end, loop.state.step, loop.stop) == (10, 10, 10, "")
    assert float(loop.metrics["loss"]) == 10.0


def test_a_hook_that_stops_ends_the_loop_after_that_step_and_later_hooks_still_act():
    calls = []
    stopper, after = Every(1, stop_at=5), Every(1)
    loop = run(program(4, calls), State(), 0, 10, [stopper, after])
    assert (loop.step, loop.state.step, loop.stop) == (5, 5, "asked at 5")
    assert len(calls) == 5 and after.steps == [1, 2, 3, 4, 5]


def test_a_loop_given_a_stop_takes_no_step():
    calls, hook = [], Every(1)
    loop = run(program(4, calls), State(step=6), 6, 10, [hook], stop="early stopping")
    assert (loop.step, loop.state.step, loop.stop) == (6, 6, "early stopping")
    assert calls == [] and hook.steps == []


def test_calls_of_several_steps_start_at_multiples_and_end_short_of_hooks_and_epochs():
    calls, lengths, every5 = [], [], Every(5)
    loop = run(program(12, calls, steps_per_call=3, lengths=lengths), State(), 0, 18, [every5])
    # 3 steps from 0, 6, 12 and 15; single steps up to 5 and 10 (the hook), then up to the
    # next multiple of 3; 12 ends an epoch
    assert lengths == [3, 1, 1, 1, 3, 1, 1, 1, 3, 3]
    assert calls == [(f"epoch {s // 12}", s % 12) for s in range(18)]
    assert every5.steps == [5, 10, 15] and loop.state.step == 18
    lengths = []
    run(program(8, steps_per_call=3, lengths=lengths), State(), 0, 9, [])
    assert lengths == [3, 3, 1, 1, 1]  # 6 + 3 would pass the epoch's end at 8


class Silent(Hook):
    """Acts every 4 steps without saying so ahead (no ``next_due``)."""

    def due(self, loop: Loop) -> bool:
        return loop.step % 4 == 0

    def act(self, loop: Loop) -> None:
        pass


def test_a_hook_that_does_not_say_when_it_acts_gets_single_steps():
    lengths = []
    run(program(8, steps_per_call=3, lengths=lengths), State(), 0, 6, [Every(2), Silent()])
    assert lengths == [1] * 6


def test_a_loop_resumed_from_a_middle_step_takes_the_same_batches():
    straight, first, resumed, permuted = [], [], [], []
    run(program(4, straight), State(), 0, 10, [])
    middle = run(program(4, first), State(), 0, 6, []).state
    loop = run(program(4, resumed, permuted), middle, 6, 10, [])
    assert first + resumed == straight
    assert permuted == [1, 2]  # the resumed epoch's permutation is made again
    assert loop.state.step == 10


# --- a run's hooks ----------------------------------------------------------------------------

class Writer:
    def __init__(self):
        self.records = []

    def write(self, step: int, split: str, metrics: dict) -> None:
        self.records.append({"step": step, "split": split, **metrics})

    def steps(self, split: str) -> list[int]:
        return [r["step"] for r in self.records if r["split"] == split]


class Checkpoints:
    directory = "/runs/x/checkpoints"

    def __init__(self):
        self.saved = []  # (step, state, metrics or None)

    def save(self, step: int, state: State, sig: dict, metrics: dict | None = None) -> None:
        self.saved.append((step, state, metrics))

    def latest_step(self) -> int | None:
        return self.saved[-1][0] if self.saved else None

    def wait(self) -> None:
        pass


def evaluate(state: State) -> dict:
    """A one-split 'evaluation' whose loss is the state's step."""
    return {"loss": float(state.step), "accuracy": 0.5}


class Requests:
    """A stop request arriving after step ``at``."""

    def __init__(self, at: int):
        self.at, self.reason = at, None

    def requested(self, step: int) -> bool:
        if step >= self.at:
            self.reason = "SIGTERM"
        return self.reason is not None


PLAN = Plan(steps_per_epoch=4, total_steps=12, eval_every_steps=4, checkpoint_every_steps=6)


def config():
    config = base_config()
    config.training.update(log_every_steps=5, batch_size=8)
    return config


def train(start: int = 0, steps_per_call: int = 1, plan: Plan = PLAN, **kwargs):
    """``train_runs`` of a run alone on the stand-in program (``kwargs``: of ``program``), from
    the state after ``start`` steps; returns it with the run's writer and checkpoints."""
    writer, ckpt = Writer(), Checkpoints()
    runs = hooks.Runs.alone(hooks.Output(config(), ckpt, writer))
    trained = hooks.train_runs(program(plan.steps_per_epoch, steps_per_call=steps_per_call,
                                       **kwargs),
                               State(step=start), start, config(), plan, runs,
                               {"test": evaluate}, {})
    return trained, writer, ckpt


def run_hooks(requests: Requests):
    """A run's hooks for a run alone, with its writer and checkpoints."""
    writer, ckpt = Writer(), Checkpoints()
    runs = hooks.Runs.alone(hooks.Output(config(), ckpt, writer))
    created = hooks.RunHooks.create(config(), PLAN, runs, {"test": evaluate}, {},
                                    Progress(PLAN.total_steps, 0, 8), requests)
    return created, writer, ckpt


def test_a_run_records_evaluates_and_saves_at_the_plans_steps():
    trained, writer, ckpt = train()
    # every 5 steps and at every checkpoint (evaluations every 4 steps, checkpoints every 6)
    assert writer.steps("train") == [4, 5, 6, 8, 10, 12]
    assert writer.steps("test") == [4, 8, 12]
    assert [(s, m) for s, _, m in ckpt.saved] == [
        (4, {"test_loss": 4.0, "test_accuracy": 0.5}), (6, None),
        (8, {"test_loss": 8.0, "test_accuracy": 0.5}),
        (12, {"test_loss": 12.0, "test_accuracy": 0.5})]
    losses = [r["loss"] for r in writer.records if r["split"] == "train"]
    assert losses == [2.5, 5.0, 6.0, 7.5, 9.5, 11.5]  # the mean over the steps since the last
    record = writer.records[0]
    assert record["epoch"] == 1.0 and record["images_per_sec"] > 0
    assert trained.loop.step == 12 and trained.hooks.evaluate.last == [
        {"test_loss": 12.0, "test_accuracy": 0.5}]
    assert len(trained.hooks.records.rates) == 6 and trained.seconds > 0


def test_a_run_cut_short_evaluates_and_saves_at_its_last_step_without_a_plateau_update():
    updates = []

    def plateau(state, metrics):
        updates.append(state.step)
        return dataclasses.replace(state, lr_scale=metrics["test_loss"] / 8)

    created, writer, ckpt = run_hooks(Requests(at=100))
    created.evaluate.plateau = plateau
    loop = run(program(4), State(), 0, 7, created.all())
    assert loop.step == 7
    assert writer.steps("train") == [4, 5, 6, 7] and writer.steps("test") == [4, 7]
    assert [(s, m is not None) for s, _, m in ckpt.saved] == [(4, True), (6, False), (7, True)]
    assert updates == [4]  # after the scheduled evaluation only, before its checkpoint
    assert [state.lr_scale for _, state, _ in ckpt.saved] == [0.5, 0.5, 0.5]
    assert loop.state.lr_scale == 0.5


def test_a_stop_request_ends_the_run_with_a_record_and_a_checkpoint_at_that_step():
    created, writer, ckpt = run_hooks(Requests(at=3))
    loop = run(program(4), State(), 0, 12, created.all())
    assert (loop.step, loop.stop, created.stop.reason) == (3, "stop requested (SIGTERM)",
                                                           "SIGTERM")
    assert writer.steps("train") == [3] and writer.steps("test") == []
    assert ckpt.saved == [(3, State(step=3), None)]


def test_early_stopping_ends_the_run_at_the_evaluation_that_calls_for_it():
    created, writer, ckpt = run_hooks(Requests(at=100))
    created.evaluate.stopper = EarlyStopping("test_loss", "min", patience=1)  # loss = step
    loop = run(program(4), State(), 0, 12, created.all())
    assert (loop.step, loop.stop, created.evaluate.stopped_early) == (8, "early stopping", True)
    assert writer.steps("test") == [4, 8]
    assert [(s, m is not None) for s, _, m in ckpt.saved] == [(4, True), (6, False), (8, True)]


def untimed(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records]


def test_a_run_resumed_from_a_checkpoint_logs_the_records_of_the_run_in_one_go():
    _, straight, _ = train()
    for checkpoint in (4, 6, 8):
        _, resumed, saved = train(start=checkpoint)
        after = [r for r in straight.records if r["step"] > checkpoint]
        assert untimed(resumed.records) == untimed(after), checkpoint
        assert [s for s, _, _ in saved.saved] == [s for s in (4, 6, 8, 12) if s > checkpoint]


LONGER = Plan(steps_per_epoch=8, total_steps=40, eval_every_steps=16, checkpoint_every_steps=6)


def test_several_steps_per_call_record_evaluate_and_save_at_the_steps_of_one():
    """Records every 5 steps, evaluations at 16, 32 and 40, checkpoints every 6: none a
    multiple of 3; also from each checkpoint, resumed."""
    for start in (0, 12, 16, 30):
        _, one, one_saved = train(start, plan=LONGER)
        lengths = []
        _, several, saved = train(start, steps_per_call=3, plan=LONGER, lengths=lengths)
        assert 3 in lengths and sum(lengths) == 40 - start
        assert untimed(several.records) == untimed(one.records), start
        assert saved.saved == one_saved.saved, start


class Fetched:
    """A metric on a stand-in device: notes, when it is read, its step and the steps the loop
    has dispatched by then."""

    dispatched = 0

    def __init__(self, value, step: int, reads: list):
        self.value, self.step, self.reads = value, step, reads
        Fetched.dispatched = max(Fetched.dispatched, step)

    def __array__(self, dtype=None, copy=None):
        self.reads.append((self.step, Fetched.dispatched))
        return np.asarray(self.value, np.float32)


def test_a_record_is_fetched_only_once_later_steps_are_dispatched():
    """Records every 5 steps; the run's only checkpoint (evaluation) is at its end, step 12."""
    reads = []
    Fetched.dispatched = 0
    plan = Plan(steps_per_epoch=4, total_steps=12, eval_every_steps=12)
    _, writer, _ = train(plan=plan, metric=lambda value, step: Fetched(value, step, reads))
    assert writer.steps("train") == [5, 10, 12]
    fetched_at = {}
    for step, dispatched in reads:
        fetched_at.setdefault(step, set()).add(dispatched)
    # steps 1-5 (the record at 5) are read once step 10 is dispatched, steps 6-10 at the end
    assert fetched_at == {**dict.fromkeys(range(1, 6), {10}),
                          **dict.fromkeys(range(6, 13), {12})}
    losses = [r["loss"] for r in writer.records if r["split"] == "train"]
    assert losses == [3.0, 8.0, 11.5]


def test_flush_writes_the_record_not_yet_fetched_when_a_hook_ends_the_loop():
    """A hook ends the loop between checkpoints: ``train_runs`` flushes the last record."""
    writer, ckpt = Writer(), Checkpoints()
    runs = hooks.Runs.alone(hooks.Output(config(), ckpt, writer))
    created = hooks.RunHooks.create(config(), PLAN, runs, {"test": evaluate}, {},
                                    Progress(PLAN.total_steps, 0, 8), Requests(at=100))
    loop = run(program(4), State(), 0, 12, [created.records, Every(5, stop_at=5)])
    assert loop.step == 5 and writer.steps("train") == [4]
    created.records.flush()
    assert writer.steps("train") == [4, 5]


def test_around_wraps_every_call_seeing_its_steps_before_and_its_state_after():
    entered, left = [], []

    @contextlib.contextmanager
    def around(loop):
        entered.append((loop.step, loop.steps))
        yield
        left.append(loop.state.step)

    loop = run(program(12, steps_per_call=3), State(), 0, 10, [Every(5)], around=around)
    assert entered == [(0, 3), (3, 1), (4, 1), (5, 1), (6, 3), (9, 1)]
    assert left == [3, 4, 5, 6, 9, 10] and loop.step == 10
