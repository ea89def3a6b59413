"""The per-host commands of a multi-host run, as argument lists; nothing is run here.

Every host runs the same `llmos` command; what differs is how it learns about
the others (`cli.distributed`):

- a TPU pod slice: one `gcloud compute tpus tpu-vm ssh NAME --worker=all`
  runs the command on every worker with `--distributed=true`, and JAX asks
  the TPU metadata server for the coordinator and this worker's id;
- GPU hosts (or any list of machines): one `ssh HOST` per host, each passing
  `--coordinator_address` (the first host), `--num_processes` and its own
  `--process_id`;
- `--local=N`: N processes on this machine, the same way through 127.0.0.1
  (a laptop rehearsal of a cluster run, and what the tests run).
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Mapping, Sequence

DEFAULT_PORT = 8476  # jax.distributed's usual coordinator port.


@dataclasses.dataclass(frozen=True)
class HostCommand:
    """One process of the run: where it runs (`host`) and the argv that starts it."""

    host: str
    argv: tuple[str, ...]

    @property
    def shell(self) -> str:
        """The command as one line to paste into a shell."""
        return shlex.join(self.argv)


def remote_line(program: Sequence[str], llmos_args: Sequence[str], *,
                workdir: str | None = None, env: Mapping[str, str] | None = None) -> str:
    """The shell line a remote host runs: `cd WORKDIR && VAR=... llmos ARGS...`."""
    parts = [f"{name}={shlex.quote(value)}" for name, value in (env or {}).items()]
    line = " ".join([*parts, shlex.join([*program, *llmos_args])])
    return f"cd {_shell_path(workdir)} && {line}" if workdir else line


def _shell_path(path: str) -> str:
    """`path` quoted for a shell, leaving a leading `~/` for the remote shell to expand."""
    if path == "~" or path.startswith("~/"):
        return "~" + (f"/{shlex.quote(path[2:])}" if path[2:] else "")
    return shlex.quote(path)


def tpu_pod_commands(name: str, zone: str, llmos_args: Sequence[str], *,
                     project: str | None = None, program: Sequence[str] = ("llmos",),
                     workdir: str | None = None,
                     env: Mapping[str, str] | None = None) -> list[HostCommand]:
    """One gcloud command that runs `llmos ARGS --distributed=true` on every worker."""
    line = remote_line(program, [*llmos_args, "--distributed=true"], workdir=workdir, env=env)
    argv = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={zone}"]
    if project:
        argv.append(f"--project={project}")
    # `-- -tt`: ssh gives each worker's command a terminal, so stopping this gcloud
    # (SIGTERM, Ctrl-C) hangs the terminal up and the remote `llmos train` gets SIGHUP.
    argv += ["--worker=all", "--command", line, "--", "-tt"]
    return [HostCommand(f"{name} (all workers)", tuple(argv))]


def distributed_args(coordinator: str, num_processes: int, process_id: int) -> list[str]:
    """The `llmos train` flags that place process `process_id` in the run."""
    return [f"--coordinator_address={coordinator}", f"--num_processes={num_processes}",
            f"--process_id={process_id}"]


def ssh_host_commands(hosts: Sequence[str], llmos_args: Sequence[str], *,
                      port: int = DEFAULT_PORT, program: Sequence[str] = ("llmos",),
                      workdir: str | None = None, env: Mapping[str, str] | None = None,
                      ssh: Sequence[str] = ("ssh", "-tt")) -> list[HostCommand]:
    """One `ssh -tt HOST '...'` per host; the first host is process 0 and the coordinator.

    `-tt` gives the remote command a terminal: when the local ssh is stopped
    (SIGTERM from `run_group`, Ctrl-C), the remote side is hung up and
    `llmos train` gets SIGHUP instead of running on unattended.
    """
    coordinator = f"{_address_host(hosts[0])}:{port}"
    commands = []
    for process_id, host in enumerate(hosts):
        args = [*llmos_args, *distributed_args(coordinator, len(hosts), process_id)]
        line = remote_line(program, args, workdir=workdir, env=env)
        commands.append(HostCommand(host, (*ssh, host, line)))
    return commands


def local_commands(num_processes: int, llmos_args: Sequence[str], *, port: int,
                   program: Sequence[str]) -> list[HostCommand]:
    """`num_processes` commands for this machine, coordinated through 127.0.0.1:`port`."""
    coordinator = f"127.0.0.1:{port}"
    return [HostCommand("localhost", (*program, *llmos_args,
                                      *distributed_args(coordinator, num_processes, index)))
            for index in range(num_processes)]


def _address_host(host: str) -> str:
    """The machine part of an ssh destination: `user@gpu-0` -> `gpu-0`."""
    return host.rpartition("@")[2]
