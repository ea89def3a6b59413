"""`llmos launch` and the multi-host flags of `llmos train`, without starting anything remote.

The commands `llmos launch` prints for a TPU pod and for ssh hosts are checked
as text (no cloud is called: `--dry_run=true`); that each remote line is a
valid shell command is checked by parsing it back with `shlex`. Which settings
`llmos train` joins a run with comes from flags, `LLMOS_*` variables or the
cluster launcher's environment (`cli.distributed`). `run_group` is run for real
on tiny Python processes.
"""

from __future__ import annotations

import io
import os
import shlex
import socket
import subprocess
import sys

import pytest

from llmos_jax.cli import launch_plans
from llmos_jax.cli.distributed import DistributedSettings, distributed_settings
from llmos_jax.cli.flags import parse_flags
from llmos_jax.cli.main import COMMANDS, main
from llmos_jax.cli.process_group import run_group
from llmos_jax.errors import UserError

TRAIN = ["train", "--gin_file=gin/run.gin", "--model_dir=gs://bucket/run",
         "--gin.make_optimizer.name='lion'"]


def launch_output(capsys, *args: str) -> list[str]:
    assert main(["launch", *args, "--dry_run=true", "--", *TRAIN]) == 0
    return capsys.readouterr().out.splitlines()


def test_tpu_pod_is_one_gcloud_command_for_all_workers(capsys):
    lines = launch_output(capsys, "--tpu=my-pod", "--zone=us-central2-b", "--project=lab",
                          "--workdir=~/llmos_jax", "--env=JAX_PLATFORMS=tpu")
    assert lines[0] == "# [0] my-pod (all workers)"
    argv = shlex.split(lines[1])
    assert argv[:9] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-pod",
                        "--zone=us-central2-b", "--project=lab", "--worker=all"]
    assert argv[9] == "--command"
    remote = argv[10]
    # ssh gets a terminal: stopping gcloud hangs up (SIGHUP) every worker's llmos train.
    assert argv[11:] == ["--", "-tt"]
    assert remote.startswith("cd ~/llmos_jax && JAX_PLATFORMS=tpu llmos train ")
    assert shlex.split(remote.partition(" && ")[2]) == [
        "JAX_PLATFORMS=tpu", "llmos", *TRAIN, "--distributed=true"]
    assert len(lines) == 2


def test_gpu_hosts_get_one_ssh_each_with_the_coordinator_and_their_id(capsys):
    lines = launch_output(capsys, "--hosts=me@gpu-0,gpu-1,gpu-2", "--port=9000",
                          "--program=python -m llmos_jax")
    assert [line for line in lines if line.startswith("#")] == [
        "# [0] me@gpu-0", "# [1] gpu-1", "# [2] gpu-2"]
    for index, (host, line) in enumerate(zip(["me@gpu-0", "gpu-1", "gpu-2"], lines[1::2])):
        ssh, tty, destination, remote = shlex.split(line)
        # -tt: the remote command has a terminal, so stopping this ssh hangs it up
        # (SIGHUP) instead of leaving `llmos train` running on the host.
        assert (ssh, tty, destination) == ("ssh", "-tt", host)
        assert shlex.split(remote) == ["python", "-m", "llmos_jax", *TRAIN,
                                       "--coordinator_address=gpu-0:9000", "--num_processes=3",
                                       f"--process_id={index}"]


def test_local_processes_share_a_127_0_0_1_coordinator():
    commands = launch_plans.local_commands(2, TRAIN, port=1234, program=["py", "-m", "llmos_jax"])
    assert [c.argv[-3:] for c in commands] == [
        ("--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=0"),
        ("--coordinator_address=127.0.0.1:1234", "--num_processes=2", "--process_id=1")]
    assert all(c.argv[:3 + len(TRAIN)] == ("py", "-m", "llmos_jax", *TRAIN) for c in commands)


@pytest.mark.parametrize("args, message", [
    ((), "exactly one of --tpu"),
    (("--tpu=pod", "--local=2"), "exactly one of --tpu"),
    (("--tpu=pod",), "--tpu needs --zone"),
    (("--local=0",), "--local=0 must be positive"),
    (("--local=2", "--env=1X=2"), "--env='1X=2' must be NAME=VALUE"),
])
def test_launch_mistakes_are_one_line_errors(capsys, args, message):
    assert main(["launch", *args, "--dry_run=true", "--", *TRAIN]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command, message", [
    ([], "needs the command to run after '--'"),
    (["serve", "--model=x"], "not 'serve'"),
    ([*TRAIN, "--process_id=1"], "--process_id is set by llmos launch"),
])
def test_launch_checks_the_command_it_runs(capsys, command, message):
    assert main(["launch", "--local=2", "--dry_run=true", "--", *command]) == 2
    assert message in capsys.readouterr().err


def test_double_dash_is_only_for_commands_that_take_a_command():
    with pytest.raises(UserError, match="unexpected argument '--'|unknown flag"):
        parse_flags(COMMANDS["train"], ["--model_dir=x", "--", "more"])
    flags = parse_flags(COMMANDS["launch"], ["--local=2", "--", "train", "--help"])
    assert flags.trailing == ("train", "--help") and not flags.help_requested


def train_flags(*args: str):
    return parse_flags(COMMANDS["train"], ["--gin_file=x.gin", "--model_dir=d", *args])


def test_train_joins_from_flags_or_the_llmos_variables():
    from_flags = distributed_settings(train_flags(
        "--coordinator_address=10.0.0.2:8476", "--num_processes=4", "--process_id=3"), {})
    assert from_flags == DistributedSettings("explicit", "10.0.0.2:8476", 4, 3)
    env = {"LLMOS_COORDINATOR_ADDRESS": "h0:1", "LLMOS_NUM_PROCESSES": "2",
           "LLMOS_PROCESS_ID": "0"}
    assert distributed_settings(train_flags(), env) == DistributedSettings("explicit", "h0:1", 2, 0)
    # A flag wins over its variable.
    assert distributed_settings(train_flags("--process_id=1"), env).process_id == 1
    assert distributed_settings(train_flags("--distributed=false"), env) == DistributedSettings()
    assert not distributed_settings(train_flags(), {}).enabled


@pytest.mark.parametrize("environ, source", [
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2",
      "SLURM_PROCID": "1", "SLURM_LOCALID": "0"}, "slurm"),
    ({"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n1", "SLURM_NTASKS": "1",
      "SLURM_PROCID": "0", "SLURM_LOCALID": "0"}, "single"),  # One task: nothing to join.
    ({"OMPI_MCA_orte_hnp_uri": "1.0;tcp://10.0.0.1:1", "OMPI_COMM_WORLD_SIZE": "2"}, "openmpi"),
    ({"TPU_WORKER_HOSTNAMES": "t-0,t-1,t-2,t-3"}, "tpu"),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, "single"),
])
def test_train_detects_the_cluster_launchers_jax_reads(environ, source):
    assert distributed_settings(train_flags(), environ).source == source
    assert distributed_settings(train_flags("--distributed=false"), environ).source == "single"


def test_distributed_true_lets_jax_detect_the_cluster():
    assert distributed_settings(train_flags("--distributed=true"), {}).source == \
        "--distributed=true"


@pytest.mark.parametrize("args, message", [
    (("--num_processes=2", "--process_id=0"), "missing --coordinator_address"),
    (("--coordinator_address=h:1",), "missing --num_processes (or LLMOS_NUM_PROCESSES), "
                                     "--process_id"),
    (("--coordinator_address=h", "--num_processes=2", "--process_id=0"), "must be HOST:PORT"),
    (("--coordinator_address=h:1", "--num_processes=2", "--process_id=2"), "must be in [0, 2)"),
    (("--coordinator_address=h:1", "--num_processes=two", "--process_id=0"),
     "--num_processes='two'"),
    (("--distributed=maybe",), "must be auto, true or false"),
])
def test_incomplete_or_malformed_settings_fail_before_training(capsys, tmp_path, args, message):
    # `llmos train` itself: the error comes before gin is parsed or model_dir is made.
    model_dir = tmp_path / "run"
    assert main(["train", "--gin_file=missing.gin", f"--model_dir={model_dir}", *args]) == 2
    assert message in capsys.readouterr().err
    assert not model_dir.exists()


def test_run_group_prefixes_output_and_stops_the_others_when_one_fails():
    out = io.StringIO()
    ok = [sys.executable, "-c", "print('hello')"]
    assert run_group([ok, ok], out=out) == 0
    assert sorted(out.getvalue().splitlines()) == ["[0] hello", "[1] hello"]
    out = io.StringIO()
    sleeper = [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"]
    failing = [sys.executable, "-c", "import sys, time; time.sleep(0.5); sys.exit(3)"]
    assert run_group([sleeper, failing], out=out, poll_s=0.05) == 3





# `llmos train` with the real gin parsing and registry look-up, and a trainer that only says
# it was called (the test is about what happens before training).
TRAIN_UNTIL_THE_TRAINER = """
import sys
from llmos_jax.cli.main import main
from llmos_jax.cli.train_command import train_command
command = train_command(lambda **kwargs: print("TRAINED"),
                        configurable_modules=("llmos_jax.training.trainer",))
sys.exit(main(sys.argv[1:], commands={"train": command}))
"""


@pytest.mark.slow
def test_a_host_missing_the_warm_start_version_fails_before_joining(tmp_path):
    """Process 0 of 2 whose registry lacks `models:/absent@champion` stops with that reason
    before it joins: joining first would leave it, and every other host, waiting."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LLMOS_HOME": str(tmp_path / "home"), "JAX_PLATFORMS": "cpu"}
    env.pop("MLFLOW_TRACKING_URI", None)
    (tmp_path / "run.gin").write_text("InitFrom.checkpoint = 'models:/absent@champion'\n")
    argv = [sys.executable, "-c", TRAIN_UNTIL_THE_TRAINER, "train",
            f"--gin_file={tmp_path / 'run.gin'}", f"--model_dir={tmp_path / 'run'}",
            f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", "--process_id=0"]
    try:
        result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.fail("llmos train joined the run (and waited for process 1) before it "
                    "looked the warm-start version up")
    assert result.returncode != 0 and "TRAINED" not in result.stdout
    assert "no registered model 'absent'" in result.stderr
