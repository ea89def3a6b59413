"""Hooks subscribe to the training loop: their own schedule, host values only when due, in order."""

import dataclasses
import json
import math
import pathlib
import time

import gin
import jax
import pytest

from llmos_jax.training.hooks import Schedule, StepContext, Throughput

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
TINY_GIN = REPO_ROOT / "tests/gin/tiny_train.gin"


class Recorder:
    """A user hook: records what it saw, into a log shared with other recorders."""

    def __init__(self, name, schedule, log):
        self.name, self.schedule, self.log = name, schedule, log
        self.fetched_before = {}  # step -> whether another hook had fetched the metrics
        self.losses, self.end = {}, None

    def on_step(self, context):
        self.fetched_before[context.step] = context._host is not None
        self.losses[context.step] = context.host_metrics()["loss"]
        self.log.append((self.name, context.step))

    def on_end(self, context):
        self.end = (context.step, context.finished)
        self.log.append((self.name, "end"))


class CompilingRecorder(Recorder):
    """A recorder whose first call compiles a program of its own, as a first evaluation does."""

    def on_step(self, context):
        if not self.losses:
            jax.jit(lambda x: x * 5.0 - 2.0)(jax.numpy.ones(3)).block_until_ready()
        super().on_step(context)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from llmos_jax import runtime
    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training.train_config import TrainConfig
    from llmos_jax.training.trainer import train

    root = tmp_path_factory.mktemp("hooks")
    corpus = root / "corpus.txt"
    corpus.write_text("\n\n".join(f"The cat {i} sat on the mat and the dog ran to the red barn."
                                  for i in range(60)))
    gin.clear_config()
    log = []
    every_step = Recorder("every_step", Schedule(every=1), log)
    every_four = CompilingRecorder("every_four", Schedule(every=4), log)
    # Spies on the loop's heap-fragment retirement: after which step it ran.
    every_step.retired_after = []
    real_retire = runtime.retire_heap_fragments

    def retire_spy(*args, **kwargs):
        every_step.retired_after.append(log[-1][1])
        return real_retire(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runtime, "retire_heap_fragments", retire_spy)
        parse_gin([str(TINY_GIN)], [f"register_text_file_task.path = {str(corpus)!r}",
                                    "train.num_steps = 6", "train.log_every = 2",
                                    "train.checkpoint_every = 3", "train.eval_every = 0",
                                    "train.export = False", "train.sample_prompts = []"])
        config = dataclasses.replace(TrainConfig.from_gin(), hooks=(every_step,))
        try:
            result = train(model_dir=str(root / "run"), config=config, hooks=(every_four,))
        finally:
            gin.clear_config()
    return result, every_step, every_four, log, root / "run"


def test_user_hooks_run_on_their_schedule_in_order(run):
    result, every_step, every_four, log, _ = run
    assert result.last_step == 6 and not result.interrupted
    # config.hooks before train(hooks=...), each at its own steps, the last step included.
    assert log == [("every_step", 1), ("every_step", 2), ("every_step", 3), ("every_step", 4),
                   ("every_four", 4), ("every_step", 5), ("every_step", 6), ("every_four", 6),
                   ("every_step", "end"), ("every_four", "end")]
    assert every_step.end == every_four.end == (6, True)


def test_hooks_share_the_logged_host_values(run):
    result, every_step, every_four, _, _ = run
    assert sorted(result.train_losses) == [2, 4, 6]
    for step, loss in result.train_losses.items():
        assert every_step.losses[step] == loss
    assert every_four.losses == {4: result.train_losses[4], 6: result.train_losses[6]}
    assert all(math.isfinite(loss) for loss in every_step.losses.values())


def test_standard_hooks_fetch_metrics_only_on_their_schedule(run):
    _, every_step, _, _, model_dir = run
    # Logging (every 2) and checkpointing (every 3) read the metrics on their steps only;
    # on step 1 and 5 nothing had fetched them before the user hook.
    assert every_step.fetched_before == {1: False, 2: True, 3: True, 4: True, 5: False, 6: True}
    rows = [json.loads(line) for line in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows if row.get("split") == "train"] == [2, 4, 6]
    assert sorted(int(p.name) for p in (model_dir / "checkpoints").iterdir()) == [3, 6]


def test_host_metrics_are_fetched_once_and_copied():
    metrics = {"loss": jax.numpy.asarray(2.5)}
    context = StepContext(step=1, state=None, metrics=metrics, last=False, stopping=False,
                          throughput=Throughput(10))
    first = context.host_metrics()
    first["loss"] = 0.0  # A hook changing its copy changes no other hook's values.
    assert context.host_metrics() == {"loss": 2.5}


def test_throughput_after_a_save_counts_only_the_steps_timed():
    """A save mid-interval: tokens/s covers the steps after it, not steps with no time."""
    throughput = Throughput(tokens_per_step=100)
    for _ in range(5):  # steps before the save (their time is lost with the save's)
        time.sleep(0.02)
        throughput.count_step()
    time.sleep(0.2)  # the save
    throughput.exclude_until_now()
    started = time.perf_counter()
    for _ in range(5):
        time.sleep(0.02)
        throughput.count_step()
    seconds_per_step, tokens_per_second = throughput.report()
    elapsed = time.perf_counter() - started
    assert tokens_per_second == pytest.approx(500 / elapsed, rel=0.2)
    assert seconds_per_step == pytest.approx(elapsed / 5, rel=0.2)


def test_the_loop_retires_heap_fragments_after_the_steps_that_compiled(run):
    _, every_step, _, _, _ = run
    # Step 1 compiled the train step, and the every-four hook a program at step 4 (a
    # first checkpoint's copies may compile too, at step 3, unless an earlier test in
    # this process compiled them); steps that compiled nothing do not retire, nor does
    # the last one, after which nothing is left to speed up.
    assert every_step.retired_after[0] == 1
    assert 4 in every_step.retired_after
    assert 6 not in every_step.retired_after
    assert set(every_step.retired_after) <= {1, 3, 4}
