"""End to end: `python -m llmos_jax train` on the tiny test config, as a user runs it.

Two real training subprocesses (started together to share their start-up time):
the baseline (tests/gin/tiny_train.gin, 20 steps, AdamW) and an override run
(`--gin.train.num_steps=7 --gin.make_optimizer.name="'lion'"` in a shell; it also turns
off evaluation and the end-of-run samples, which the baseline covers, so it neither
reads the validation split nor compiles the eval and sampling steps). Every assertion
reads what the runs left on disk (metrics.jsonl, checkpoints, TensorBoard
events, config.gin, export/), not what the trainer returned.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import re
import struct
import subprocess
import sys

import pytest
from tiny_snapshot import write_corpus

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_GIN = "tests/gin/tiny_train.gin"
TIMEOUT_S = 300

TRAIN_KEYS = ("loss", "accuracy", "learning_rate", "grad_norm", "param_norm", "step_time",
              "tokens_per_second", "mfu")
EVAL_KEYS = ("loss", "accuracy")


def subprocess_env() -> dict[str, str]:
    """The test environment (conftest's 8 CPU devices included), as a user's shell has it:
    no TF_CPP_MIN_LOG_LEVEL, so TensorFlow's start-up chatter would show."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def llmos_train_argv(model_dir: pathlib.Path, corpus: pathlib.Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "llmos_jax", "train", f"--gin_file={TINY_GIN}",
            f"--model_dir={model_dir}",
            f"--gin.register_text_file_task.path={str(corpus)!r}", *overrides]


def read_metrics(model_dir: pathlib.Path) -> list[dict]:
    with open(model_dir / "metrics.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def train_records(records: list[dict]) -> dict[int, dict]:
    """The last train record of each step (a resumed run appends)."""
    return {r["step"]: r for r in records if r["split"] == "train"}


def checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
    """Finished checkpoints: orbax writes into a temporary folder, then renames it to <step>."""
    folder = model_dir / "checkpoints"
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


def read_event_scalars(logdir: pathlib.Path) -> dict[str, dict[int, float]]:
    """tag -> step -> value from the TFRecord event files in `logdir` (no TensorFlow needed)."""
    from tensorboardX.proto import event_pb2

    scalars: dict[str, dict[int, float]] = {}
    files = sorted(logdir.glob("events.out.tfevents.*"))
    assert files, f"no TensorBoard event file in {logdir}"
    for file in files:
        data = file.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset:offset + 8])
            payload = data[offset + 12:offset + 12 + length]
            offset += 12 + length + 4
            event = event_pb2.Event.FromString(payload)
            for value in event.summary.value:
                if value.HasField("simple_value"):
                    scalars.setdefault(value.tag, {})[event.step] = value.simple_value
                elif value.HasField("tensor") and value.tensor.float_val:
                    scalars.setdefault(value.tag, {})[event.step] = value.tensor.float_val[0]
    return scalars


class Run:
    def __init__(self, model_dir: pathlib.Path, proc: subprocess.CompletedProcess):
        self.model_dir = model_dir
        self.returncode = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    def describe(self) -> str:
        return (f"exit {self.returncode}\n--- stdout ---\n{self.stdout[-3000:]}"
                f"\n--- stderr ---\n{self.stderr[-6000:]}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Run]:
    """The baseline and the override run, executed concurrently."""
    root = tmp_path_factory.mktemp("e2e_cli")
    corpus = write_corpus(root / "corpus.txt")
    commands = {
        "base": llmos_train_argv(root / "base", corpus),
        "lion7": llmos_train_argv(root / "lion7", corpus, "--gin.train.num_steps=7",
                                  "--gin.make_optimizer.name='lion'", "--gin.train.eval_every=0",
                                  "--gin.train.sample_prompts=[]"),
    }
    procs = {name: subprocess.Popen(argv, cwd=REPO_ROOT, env=subprocess_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, argv in commands.items()}
    results = {}
    for name, proc in procs.items():
        try:
            stdout, stderr = proc.communicate(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            for other in procs.values():
                other.kill()
            raise
        results[name] = Run(root / name, subprocess.CompletedProcess(
            proc.args, proc.returncode, stdout, stderr))
    return results


@pytest.fixture(scope="module")
def base(runs) -> Run:
    run = runs["base"]
    assert run.returncode == 0, run.describe()
    return run


def test_cli_run_exits_cleanly(base):
    assert "Traceback" not in base.stderr, base.describe()
    assert "llmos: error" not in base.stderr, base.describe()
    # No TensorFlow/CUDA C++ start-up lines (E0000 ... failed call to cuInit reads as an error).
    for noise in ("cuInit", "cudart_stub", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in base.stderr + base.stdout, base.describe()


def test_loss_drops_and_every_step_is_logged_with_all_metrics(base):
    train = train_records(read_metrics(base.model_dir))
    assert sorted(train) == list(range(1, 21)), sorted(train)
    for step, record in train.items():
        for key in TRAIN_KEYS:
            assert key in record, f"train record of step {step} lacks {key!r}: {record}"
            assert isinstance(record[key], float) and math.isfinite(record[key]), (step, key, record)
        assert record["step_time"] > 0 and record["tokens_per_second"] > 0
        assert record["mfu"] > 0, record  # No upper bound: the CPU peak is measured under load.
        assert record["grad_norm"] > 0 and record["param_norm"] > 0
    first, last = train[1]["loss"], train[20]["loss"]
    assert first > last, f"loss did not drop: step 1 {first}, step 20 {last}"
    assert first == pytest.approx(math.log(259), abs=0.3)  # Untrained: about uniform.
    assert last < first - 1.0, f"loss barely dropped: {first} -> {last}"
    # Warmup then decay: the logged rate rises over the two warmup steps, then falls.
    rates = [train[s]["learning_rate"] for s in range(1, 21)]
    assert rates[0] < rates[1] < rates[2] and rates[2] > rates[-1] > 0, rates


def test_a_normal_run_raises_no_alert(base):
    """The default rules (alert_rules.Alerting) watch it, compile, eval and saves included."""
    assert not (base.model_dir / "alerts.jsonl").exists(), (base.model_dir / "alerts.jsonl")\
        .read_text()
    assert "ALERT" not in base.stderr
    train = train_records(read_metrics(base.model_dir))
    assert {r["loss_spikes"] for r in train.values()} == {0.0}  # counted inside the step
    assert {r["grad_norm_spikes"] for r in train.values()} == {0.0}


def test_eval_records_every_eval_every_steps(base):
    records = read_metrics(base.model_dir)
    evals = {r["step"]: r for r in records if r["split"] == "eval"}
    assert sorted(evals) == [10, 20], records
    for step, record in evals.items():
        for key in EVAL_KEYS:
            assert isinstance(record[key], float) and math.isfinite(record[key]), record
        assert 0 <= record["accuracy"] <= 1
    assert evals[20]["loss"] < math.log(259) - 1.0, evals


def test_checkpoints_every_checkpoint_every_steps(base):
    assert checkpoint_steps(base.model_dir) == [5, 10, 15, 20]
    for step in (5, 10, 15, 20):
        folder = base.model_dir / "checkpoints" / str(step)
        assert (folder / "state").is_dir() and (folder / "meta").is_dir(), list(folder.iterdir())


def test_tensorboard_events_hold_the_logged_losses(base):
    logged = {s: r["loss"] for s, r in train_records(read_metrics(base.model_dir)).items()}
    scalars = read_event_scalars(base.model_dir / "tensorboard" / "train")
    assert set(TRAIN_KEYS) <= set(scalars), sorted(scalars)
    assert scalars["loss"] == pytest.approx(logged, rel=1e-6)
    eval_scalars = read_event_scalars(base.model_dir / "tensorboard" / "eval")
    assert sorted(eval_scalars["loss"]) == [10, 20]


def test_config_gin_records_the_bindings_used(base):
    # gin wraps a long binding after "= \"; join such lines (the corpus path's length varies).
    config = re.sub(r"\s*\\\n\s*", " ", (base.model_dir / "config.gin").read_text())
    for binding in ("TransformerConfig.embed_dim = 32", "TransformerConfig.num_layers = 2",
                    "train.num_steps = 20", "train.global_batch_size = 8",
                    "make_optimizer.name = 'adamw'", "register_text_file_task.path = '"):
        assert binding in config, f"{binding!r} missing from config.gin:\n{config}"


def test_export_written_at_the_end(base):
    export = base.model_dir / "export"
    assert (export / "params").is_dir(), list(export.iterdir()) if export.exists() else "none"
    meta = json.loads((export / "meta.json").read_text())
    assert meta["step"] == 20
    assert meta["model_config"]["embed_dim"] == 32


def test_samples_are_printed_and_recorded(base):
    texts = [r for r in read_metrics(base.model_dir) if r["split"] == "text"]
    assert texts, "no text (sample) record in metrics.jsonl"
    sample = texts[-1]["samples"]
    assert texts[-1]["step"] == 20
    assert sample.startswith("The ") and len(sample) > len("The "), repr(sample)
    assert "samples after 20 steps" in base.stdout and sample in base.stdout, base.describe()
    assert (base.model_dir / "tensorboard" / "text").is_dir()


def test_gin_override_changes_steps_and_optimizer(base, runs):
    """--gin.train.num_steps=7 stops at 7; --gin.make_optimizer.name='lion' changes the updates."""
    lion = runs["lion7"]
    assert lion.returncode == 0, lion.describe()
    train = train_records(read_metrics(lion.model_dir))
    assert sorted(train) == list(range(1, 8)), sorted(train)
    assert checkpoint_steps(lion.model_dir) == [5, 7]
    assert json.loads((lion.model_dir / "export" / "meta.json").read_text())["step"] == 7
    # The other two overrides: no eval record and no sample.
    assert {r["split"] for r in read_metrics(lion.model_dir)} == {"train"}
    adamw = train_records(read_metrics(base.model_dir))
    # Same seed, init and data: the loss before the first update is identical ...
    assert train[1]["loss"] == adamw[1]["loss"]
    # ... and every later loss differs, because a different optimizer made the updates.
    for step in range(2, 8):
        assert train[step]["loss"] != adamw[step]["loss"], step
