"""`llmos launch`: print, then run, the per-host commands of a multi-host `llmos train`.

    llmos launch --tpu=my-pod --zone=us-central2-b -- train --gin_file=... --model_dir=gs://...
    llmos launch --hosts=gpu-0,gpu-1 --workdir=~/llmos_jax -- train --gin_file=... --model_dir=...
    llmos launch --local=2 --local_cpu_devices=4 -- train --gin_file=... --model_dir=...

The commands come from `cli.launch_plans`; `--dry_run=true` only prints them.
Remote runs go through `gcloud` or `ssh`, so the hosts need the package, the
data and a shared `--model_dir` (a bucket or a network folder) already.
"""

from __future__ import annotations

import os
import re
import sys

from llmos_jax.cli import launch_plans
from llmos_jax.cli.distributed import DISTRIBUTED_FLAGS
from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.cli.process_group import run_group
from llmos_jax.errors import UserError

LAUNCH_EXAMPLE = ("llmos launch --local=2 --local_cpu_devices=4 -- train "
                  "--gin_file=experiments/quickstart/quickstart.gin --model_dir=/tmp/llmos_2hosts")
LAUNCHABLE = ("train",)  # The commands that take the --coordinator_address family of flags.


def launch_command() -> Command:
    """Builds the `llmos launch` command."""
    flags = (
        Flag("tpu", "NAME", "A Cloud TPU VM (pod slice): run on all its workers through "
             "'gcloud compute tpus tpu-vm ssh NAME --worker=all'."),
        Flag("zone", "ZONE", "The TPU's zone (with --tpu)."),
        Flag("project", "PROJECT", "The TPU's Google Cloud project (with --tpu; default: "
             "gcloud's)."),
        Flag("hosts", "H1,H2,...", "Machines to ssh into, in process order; the first is "
             "process 0 and the coordinator."),
        Flag("port", "N", f"The coordinator's port (default {launch_plans.DEFAULT_PORT}; "
             "with --local a free one)."),
        Flag("local", "N", "Run N processes on this machine instead (a rehearsal of a "
             "cluster run)."),
        Flag("local_cpu_devices", "K", "With --local: simulate K CPU devices per process "
             "(sets XLA_FLAGS and JAX_PLATFORMS=cpu)."),
        Flag("workdir", "DIR", "Folder the remote command runs in (cd DIR first)."),
        Flag("program", "CMD", "How hosts start llmos (default 'llmos'; with --local this "
             "Python's 'python -m llmos_jax')."),
        Flag("env", "NAME=VALUE", "An environment variable for the remote command; "
             "repeatable.", repeatable=True),
        Flag("dry_run", "BOOL", "true: print the commands, run nothing."),
    )
    return Command(
        name="launch",
        summary="Run 'llmos train' on every host of a TPU pod, a GPU cluster or local processes.",
        description="Print the command each host runs for a multi-host 'llmos train', then run "
        "them: one gcloud command for all workers of a TPU pod (--tpu), one ssh per host "
        "(--hosts), or N processes here (--local). Everything after '--' is the llmos command; "
        "the flags that join the hosts are added to it.",
        usage="llmos launch (--tpu=NAME --zone=ZONE | --hosts=H1,H2,... | --local=N) "
        "[--dry_run=true] -- train --gin_file=PATH --model_dir=DIR [...]",
        flags=flags,
        example=LAUNCH_EXAMPLE,
        run=run_launch,
        trailing="The llmos command every host runs, e.g. train --gin_file=... --model_dir=...",
    )


def run_launch(flags: ParsedFlags) -> int:
    """Builds the per-host commands, prints them and (unless --dry_run) runs them."""
    llmos_args = _llmos_args(flags.trailing)
    targets = [name for name in ("tpu", "hosts", "local") if flags.one(name)]
    if len(targets) != 1:
        raise UserError("llmos launch needs exactly one of --tpu=NAME (a TPU pod), "
                        "--hosts=H1,H2,... (machines reached by ssh) or --local=N, e.g. "
                        f"{LAUNCH_EXAMPLE}")
    program = flags.one("program")
    env = _env_pairs(flags.all("env"))
    if flags.one("local"):
        num = flags.positive_int("local", None)
        port = flags.positive_int("port", None) or _free_port()
        commands = launch_plans.local_commands(
            num, llmos_args, port=port,
            program=program.split() if program else (sys.executable, "-m", "llmos_jax"))
        child_env = _local_env(flags.positive_int("local_cpu_devices", None), env)
    elif flags.one("tpu"):
        zone = flags.one("zone")
        if not zone:
            raise UserError("--tpu needs --zone, the TPU's zone, e.g. --zone=us-central2-b")
        commands = launch_plans.tpu_pod_commands(
            flags.one("tpu"), zone, llmos_args, project=flags.one("project"),
            program=(program or "llmos").split(), workdir=flags.one("workdir"), env=env)
        child_env = None
    else:
        hosts = [host.strip() for host in flags.one("hosts").split(",") if host.strip()]
        commands = launch_plans.ssh_host_commands(
            hosts, llmos_args, port=flags.positive_int("port", launch_plans.DEFAULT_PORT),
            program=(program or "llmos").split(), workdir=flags.one("workdir"), env=env)
        child_env = None
    for index, command in enumerate(commands):
        print(f"# [{index}] {command.host}\n{command.shell}")
    sys.stdout.flush()
    if flags.boolean("dry_run"):
        return 0
    return run_group([command.argv for command in commands], env=child_env)


def _llmos_args(trailing: tuple[str, ...]) -> list[str]:
    """The llmos command after `--`, checked: a launchable command, no joining flags of its own."""
    if not trailing:
        raise UserError(f"llmos launch needs the command to run after '--', e.g. {LAUNCH_EXAMPLE}")
    if trailing[0] not in LAUNCHABLE:
        raise UserError(f"llmos launch runs {', '.join(LAUNCHABLE)} on many hosts, not "
                        f"'{trailing[0]}'; put it first after '--', e.g. {LAUNCH_EXAMPLE}")
    joining = {f"--{flag.name}" for flag in DISTRIBUTED_FLAGS}
    for arg in trailing:
        if arg.partition("=")[0] in joining:
            raise UserError(f"{arg.partition('=')[0]} is set by llmos launch for each host; "
                            "remove it from the command after '--'.")
    return list(trailing)


def _env_pairs(values: list[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, equals, setting = value.partition("=")
        if not equals or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise UserError(f"--env={value!r} must be NAME=VALUE, e.g. --env=JAX_PLATFORMS=tpu")
        pairs[name] = setting
    return pairs


def _local_env(cpu_devices: int | None, extra: dict[str, str]) -> dict[str, str]:
    """This environment for the local processes, with `cpu_devices` simulated CPU devices each."""
    env = {**os.environ, **extra}
    if cpu_devices is not None:
        flags = re.sub(r"--xla_force_host_platform_device_count=\S*", "",
                       env.get("XLA_FLAGS", "")).split()
        env["XLA_FLAGS"] = " ".join(
            [*flags, f"--xla_force_host_platform_device_count={cpu_devices}"])
        env["JAX_PLATFORMS"] = "cpu"
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
