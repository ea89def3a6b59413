"""Preemption end to end: SIGKILL and SIGTERM mid-run, then resume to the same losses.

Three `python -m llmos_jax train` subprocesses run the same command
(tests/gin/tiny_run.gin on the tiny text's split snapshot, 30 steps, a
checkpoint every 10, async checkpoints, dropout on): an uninterrupted
reference, one SIGKILLed and one SIGTERMed once a checkpoint (step 10 or 20)
is finished on disk and the run has logged past it.
Rerunning the same command must resume from the latest checkpoint and
reproduce the reference's train losses bit for bit, which needs the data
order, the dropout keys and the optimizer state to be restored exactly.

The subprocesses (and the in-process runs) share the session's persistent XLA
compilation cache (tests/conftest.py), and the two interrupted runs start once
the reference has compiled its initialisation, so mostly the reference pays
for compiling: that cuts the CPU time of this module by about 40% without
changing what any run computes.

The model is still tiny but the batch is larger than in the other end-to-end
tests so that a step takes tens of milliseconds: the signal must land between
a checkpoint and the end of the run.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import subprocess
import time

import pytest
from tiny_snapshot import TINY_RUN_GIN, snapshot_train_argv

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT_S = 300
NUM_STEPS = 30
CHECKPOINT_EVERY = 10
RUN_OVERRIDES = (
    f"--gin.train.num_steps={NUM_STEPS}",
    f"--gin.train.checkpoint_every={CHECKPOINT_EVERY}",
    "--gin.train.async_checkpointing=True",
    "--gin.train.log_every=1",
    "--gin.TransformerConfig.dropout_rate=0.1",
    # Slower steps (~50 ms on a 2-core CPU) widen the window for the signal.
    "--gin.train.global_batch_size=64",
    "--gin.TransformerConfig.embed_dim=64",
)


def subprocess_env() -> dict[str, str]:
    """The test environment (conftest's 8 CPU devices and compilation cache included), quieter."""
    env = dict(os.environ)
    env.setdefault("JAX_PLATFORMS", "cpu")
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def read_metrics(model_dir: pathlib.Path) -> list[dict]:
    """Records of metrics.jsonl; a line still being written by a live run is skipped."""
    path = model_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return records


def train_losses(records: list[dict]) -> dict[int, float]:
    """step -> loss, the last record of each step winning (a resumed run appends)."""
    return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def checkpoint_steps(model_dir: pathlib.Path) -> list[int]:
    """Finished checkpoints: orbax writes into a temporary folder, then renames it to <step>."""
    folder = model_dir / "checkpoints"
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())


class Run:
    """One `llmos train` subprocess; its output goes to files, so a full pipe never blocks it."""

    def __init__(self, argv: list[str], model_dir: pathlib.Path, log_name: str):
        self.argv, self.model_dir = argv, model_dir
        log_dir = model_dir.parent / "logs"
        log_dir.mkdir(exist_ok=True)
        self._out_path, self._err_path = log_dir / f"{log_name}.out", log_dir / f"{log_name}.err"
        with open(self._out_path, "w") as out, open(self._err_path, "w") as err:
            self.proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=subprocess_env(), text=True,
                                         stdout=out, stderr=err)
        self.stdout = self.stderr = ""
        self.signalled_at: dict | None = None

    def finish(self) -> int:
        try:
            self.proc.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._read_output()
            pytest.fail(f"{self.argv} did not finish in {TIMEOUT_S}s:\n{self.stderr[-4000:]}")
        self._read_output()
        return self.proc.returncode

    def wait_for_log(self, text: str) -> None:
        """Blocks until `text` is in the run's stderr (or the run ended: `finish` reports it)."""
        deadline = time.monotonic() + TIMEOUT_S
        while self.proc.poll() is None and time.monotonic() < deadline:
            if text in self._err_path.read_text(errors="replace"):
                return
            time.sleep(0.05)

    def _read_output(self) -> None:
        self.stdout = self._out_path.read_text(errors="replace")
        self.stderr = self._err_path.read_text(errors="replace")

    def describe(self) -> str:
        return (f"exit {self.proc.returncode}\n--- stdout ---\n{self.stdout[-2000:]}"
                f"\n--- stderr ---\n{self.stderr[-6000:]}")


def send_after_checkpoint(runs: dict[Run, int]) -> None:
    """Sends each run its signal once checkpoint 10 or 20 is finished and it has logged past it.

    Records in `run.signalled_at` the finished checkpoints and the last logged step at that moment.
    """
    pending = dict(runs)
    deadline = time.monotonic() + TIMEOUT_S
    while pending:
        for run, signum in list(pending.items()):
            if run.proc.poll() is not None:
                run.finish()
                pytest.fail(f"the run ended before it could be sent signal {signum} after a "
                            f"checkpoint; steps are too fast for this machine?\n{run.describe()}")
            finished = [s for s in checkpoint_steps(run.model_dir) if s in (10, 20)]
            if not finished:
                continue
            logged = max(train_losses(read_metrics(run.model_dir)), default=0)
            if logged >= NUM_STEPS - 2:
                run.proc.kill()
                run.finish()
                pytest.fail(f"the run reached step {logged} of {NUM_STEPS} before a checkpoint "
                            "was seen on disk: too late to interrupt it meaningfully")
            if logged > max(finished):
                run.proc.send_signal(signum)
                run.signalled_at = {"checkpoints": finished, "logged": logged}
                del pending[run]
        if time.monotonic() > deadline:
            for run in pending:
                run.proc.kill()
            pytest.fail("no checkpoint appeared in time")
        time.sleep(0.01)


@pytest.fixture(scope="module")
def snapshot(tiny_text) -> pathlib.Path:
    return tiny_text[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, snapshot):
    root = tmp_path_factory.mktemp("e2e_resume")

    def argv(model_dir):
        return snapshot_train_argv(model_dir, snapshot, *RUN_OVERRIDES)

    result = {"reference": Run(argv(root / "reference"), root / "reference", "reference")}
    try:
        # "model:" is logged once the state is initialised (and, with conftest's compilation
        # cache, its executable cached); the two runs to interrupt start then, and load the
        # reference's compiled steps while it trains (a miss only costs time).
        result["reference"].wait_for_log("llmos_jax.train: model:")
        for name in ("killed", "termed"):
            result[name] = Run(argv(root / name), root / name, name)
        send_after_checkpoint({result["killed"]: signal.SIGKILL,
                               result["termed"]: signal.SIGTERM})
        for run in result.values():
            run.finish()
        # What each interrupted run left behind, before the same command is rerun.
        for name in ("killed", "termed"):
            run = result[name]
            run.checkpoints_before_resume = checkpoint_steps(run.model_dir)
            run.records_before_resume = len(read_metrics(run.model_dir))
            run.exported_before_resume = (run.model_dir / "export").exists()
            run.logged_before_resume = max(train_losses(read_metrics(run.model_dir)), default=0)
        for name in ("killed", "termed"):
            interrupted = result[name]
            result[f"{name}_resumed"] = Run(interrupted.argv, interrupted.model_dir,
                                            f"{name}_resumed")
        for name in ("killed_resumed", "termed_resumed"):
            result[name].finish()
    finally:
        for run in result.values():  # Only after a failure is any still running.
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()
    return result


@pytest.fixture(scope="module")
def reference(runs) -> Run:
    reference = runs["reference"]
    assert reference.proc.returncode == 0, reference.describe()
    losses = train_losses(read_metrics(reference.model_dir))
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    return reference


def final_records(model_dir: pathlib.Path) -> dict[str, dict]:
    """The train and eval records of the last step, by split."""
    return {r["split"]: r for r in read_metrics(model_dir)
            if r["step"] == NUM_STEPS and r["split"] in ("train", "eval")}


def assert_resumed_like_reference(resumed: Run, interrupted: Run, resume_step: int,
                                  reference: Run) -> None:
    assert resumed.proc.returncode == 0, resumed.describe()
    assert f"resumed from step {resume_step}" in resumed.stderr, resumed.describe()
    records = read_metrics(resumed.model_dir)
    appended = train_losses(records[interrupted.records_before_resume:])
    assert sorted(appended) == list(range(resume_step + 1, NUM_STEPS + 1)), (
        f"the rerun should log steps {resume_step + 1}..{NUM_STEPS}, logged {sorted(appended)}")
    losses = train_losses(records)
    assert sorted(losses) == list(range(1, NUM_STEPS + 1))
    expected = train_losses(read_metrics(reference.model_dir))
    mismatched = {step: (losses[step], expected[step])
                  for step in range(resume_step + 1, NUM_STEPS + 1)
                  if losses[step] != expected[step]}
    assert not mismatched, f"resumed losses differ from the uninterrupted run: {mismatched}"
    # Bit-identical training: the final parameters and the held-out loss agree too.
    final, expected_final = final_records(resumed.model_dir), final_records(reference.model_dir)
    assert final["train"]["param_norm"] == expected_final["train"]["param_norm"]
    assert final["eval"]["loss"] == expected_final["eval"]["loss"]
    assert checkpoint_steps(resumed.model_dir)[-1] == NUM_STEPS
    assert json.loads((resumed.model_dir / "export" / "meta.json").read_text())["step"] == NUM_STEPS


def test_sigkill_after_a_checkpoint_kills_the_run(runs):
    killed = runs["killed"]
    assert killed.proc.returncode == -signal.SIGKILL, killed.describe()
    assert killed.checkpoints_before_resume, "no finished checkpoint survived the kill"
    assert max(killed.checkpoints_before_resume) < NUM_STEPS
    assert not killed.exported_before_resume


def test_rerun_after_sigkill_resumes_with_identical_losses(runs, reference):
    killed = runs["killed"]
    resume_step = max(killed.checkpoints_before_resume)
    # The killed run had gone past its last checkpoint; that work is redone.
    assert killed.signalled_at["logged"] > resume_step
    assert_resumed_like_reference(runs["killed_resumed"], killed, resume_step, reference)


def test_sigterm_saves_the_current_step_and_exits_0(runs):
    termed = runs["termed"]
    assert termed.proc.returncode == 0, termed.describe()
    assert "Traceback" not in termed.stderr, termed.describe()
    stopped_at = termed.logged_before_resume
    assert f"SIGTERM received: saved step {stopped_at}" in termed.stderr, termed.describe()
    assert termed.signalled_at["logged"] <= stopped_at < NUM_STEPS
    assert max(termed.checkpoints_before_resume) == stopped_at
    assert not termed.exported_before_resume, "an interrupted run must not export"


def test_rerun_after_sigterm_continues_from_the_saved_step(runs, reference):
    termed = runs["termed"]
    assert_resumed_like_reference(runs["termed_resumed"], termed,
                                  max(termed.checkpoints_before_resume), reference)


# --- In-process: `stop_after_steps` (a time-boxed job) then the same call again. ---
# The same run as the subprocesses' (RUN_OVERRIDES), so the reference is the uninterrupted
# run to match; evaluation and export, which change no training number, are left out.


def train_in_process(model_dir: pathlib.Path, snapshot: pathlib.Path, *bindings: str):
    import gin

    from llmos_jax.cli.gin_config import parse_gin
    from llmos_jax.training import trainer

    run_bindings = [flag.removeprefix("--gin.").replace("=", " = ", 1) for flag in RUN_OVERRIDES]
    gin.clear_config()
    try:
        parse_gin([str(TINY_RUN_GIN)],
                  [f"LMBatches.snapshot_dir = {str(snapshot)!r}", *run_bindings,
                   "train.checkpoint_every = 5", "train.eval_every = 0", "train.export = False",
                   *bindings])
        return trainer.train(model_dir=str(model_dir))
    finally:
        gin.clear_config()


def test_stop_after_steps_then_rerun_matches_an_uninterrupted_run(tmp_path, snapshot, reference):
    straight_losses = train_losses(read_metrics(reference.model_dir))
    straight_samples = [r["samples"] for r in read_metrics(reference.model_dir)
                        if r["split"] == "text"]
    assert len(straight_samples) == 1 and straight_samples[0].startswith("The ")

    first = train_in_process(tmp_path / "split", snapshot, "train.stop_after_steps = 16")
    assert first.last_step == 16 and first.interrupted
    assert sorted(first.train_losses) == list(range(1, 17))
    assert first.samples == []  # Unfinished runs don't sample.
    # Stopping saves the current step.
    assert checkpoint_steps(tmp_path / "split") == [5, 10, 15, 16]
    second = train_in_process(tmp_path / "split", snapshot, "train.stop_after_steps = 16")
    assert second.last_step == NUM_STEPS and not second.interrupted
    assert sorted(second.train_losses) == list(range(17, NUM_STEPS + 1))
    assert {s: straight_losses[s] for s in range(17, NUM_STEPS + 1)} == second.train_losses
    assert len(second.samples) == 1 and ["The " + second.samples[0]] == straight_samples
