"""Joining a multi-host run: `jax.distributed` settings from flags, the environment or the cluster.

Every host runs the same `llmos train` command. How it finds the others, first
match wins:

1. `--coordinator_address`, `--num_processes` and `--process_id` (or
   `LLMOS_COORDINATOR_ADDRESS`, `LLMOS_NUM_PROCESSES`, `LLMOS_PROCESS_ID`):
   all three, as `llmos launch` passes them to each host of a GPU cluster.
2. A cluster launcher JAX itself recognises (SLURM `srun`, Open MPI `mpirun`,
   a multi-host TPU slice that publishes `TPU_WORKER_HOSTNAMES`), or
   `--distributed=true` (what `llmos launch --tpu` passes, since a Cloud TPU
   VM is recognised only by asking its metadata server): then
   `jax.distributed.initialize()` is called with no arguments and JAX fills
   in the coordinator, the process count and this host's id.
3. Otherwise one process (`--distributed=false` forces this).

`initialize` must run before JAX creates its backends (the first array or
`jax.devices()`), so the CLI imports nothing that computes before calling it.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping

from llmos_jax.cli.flags import Flag, ParsedFlags
from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.distributed")

ENV_VARS = {
    "coordinator_address": "LLMOS_COORDINATOR_ADDRESS",
    "num_processes": "LLMOS_NUM_PROCESSES",
    "process_id": "LLMOS_PROCESS_ID",
}
MODES = ("auto", "true", "false")

DISTRIBUTED_FLAGS = (
    Flag("distributed", "auto|true|false",
         "Join a multi-host run. auto (default): when the three flags below (or their "
         "LLMOS_* variables) are set, or under SLURM, Open MPI or a multi-host TPU slice; "
         "true: always, letting JAX detect the cluster (Cloud TPU VMs); false: one process."),
    Flag("coordinator_address", "HOST:PORT",
         "Process 0's address, the same on every host (env LLMOS_COORDINATOR_ADDRESS)."),
    Flag("num_processes", "N", "How many processes (hosts) take part (env LLMOS_NUM_PROCESSES)."),
    Flag("process_id", "I", "This process's id in [0, N); 0 is the chief, which writes "
         "metrics and exports (env LLMOS_PROCESS_ID)."),
)


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
    """How this process joins the run.

    Attributes:
      source: "single" (no `jax.distributed`), "explicit" (the three values
        below) or the cluster JAX will detect ("slurm", "openmpi", "tpu",
        "--distributed=true").
    """

    source: str = "single"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None

    @property
    def enabled(self) -> bool:
        return self.source != "single"


def detect_cluster(environ: Mapping[str, str]) -> str | None:
    """The multi-process launcher this process runs under, if JAX can read its settings."""
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
             "SLURM_LOCALID")
    if all(name in environ for name in slurm) and _count(environ["SLURM_NTASKS"]) > 1:
        return "slurm"
    if "OMPI_MCA_orte_hnp_uri" in environ and _count(environ.get("OMPI_COMM_WORLD_SIZE", "2")) > 1:
        return "openmpi"
    if len([h for h in environ.get("TPU_WORKER_HOSTNAMES", "").split(",") if h.strip()]) > 1:
        return "tpu"
    return None


def distributed_settings(flags: ParsedFlags,
                         environ: Mapping[str, str] | None = None) -> DistributedSettings:
    """The settings the flags and the environment give; nothing is started.

    Raises:
      UserError: some of the three explicit values are set but not all, or one
        is malformed; `--distributed` is not auto, true or false.
    """
    environ = os.environ if environ is None else environ
    mode = (flags.one("distributed") or "auto").lower()
    if mode not in MODES:
        raise UserError(f"--distributed={mode!r} must be auto, true or false.")
    given = {name: flags.one(name) or environ.get(env) or None
             for name, env in ENV_VARS.items()}
    if mode == "false":
        return DistributedSettings()
    if any(given.values()):
        missing = [f"--{name} (or {ENV_VARS[name]})" for name, value in given.items()
                   if value is None]
        if missing:
            raise UserError(
                f"a multi-host run needs --coordinator_address, --num_processes and "
                f"--process_id together; missing {', '.join(missing)}. Example for host 1 of 2: "
                "--coordinator_address=10.0.0.2:8476 --num_processes=2 --process_id=1")
        return _explicit(given)
    cluster = detect_cluster(environ)
    if cluster is not None:
        return DistributedSettings(source=cluster)
    if mode == "true":
        return DistributedSettings(source="--distributed=true")
    return DistributedSettings()


def _explicit(given: Mapping[str, str | None]) -> DistributedSettings:
    address = str(given["coordinator_address"])
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--coordinator_address={address!r} must be HOST:PORT, "
                        "e.g. 10.0.0.2:8476 (process 0's host and a free port).")
    num_processes = _int(given["num_processes"], "num_processes")
    process_id = _int(given["process_id"], "process_id")
    if num_processes < 1:
        raise UserError(f"--num_processes={num_processes} must be at least 1.")
    if not 0 <= process_id < num_processes:
        raise UserError(f"--process_id={process_id} must be in [0, {num_processes}) "
                        f"for --num_processes={num_processes}.")
    return DistributedSettings("explicit", address, num_processes, process_id)


def _int(value: str | None, name: str) -> int:
    try:
        return int(str(value))
    except ValueError:
        raise UserError(f"--{name}={value!r} (or {ENV_VARS[name]}) is not an integer.") from None


def _count(value: str) -> int:
    """A launcher's process count; 0 when it is not a number."""
    return int(value) if value.strip().isdigit() else 0


def initialize(settings: DistributedSettings) -> None:
    """Starts `jax.distributed` as `settings` say; call before anything touches a device.

    Raises:
      UserError: JAX's backends already exist, or the coordinator cannot be reached.
    """
    if not settings.enabled:
        return
    import jax

    # CPU hosts need a collectives library to run one program across processes.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    kwargs = {}
    if settings.source == "explicit":
        kwargs = {"coordinator_address": settings.coordinator_address,
                  "num_processes": settings.num_processes,
                  "process_id": settings.process_id}
    try:
        jax.distributed.initialize(**kwargs)
    except (RuntimeError, ValueError) as error:
        where = (f"the coordinator {settings.coordinator_address}" if kwargs
                 else f"the cluster ({settings.source})")
        raise UserError(f"could not join the multi-host run through {where}: {error}. Check "
                        "that every host runs the same command and that process 0's port is "
                        "reachable, or pass --distributed=false for one process.") from error
    log.info("process %d of %d (%s); %d local of %d devices", jax.process_index(),
             jax.process_count(), settings.source, jax.local_device_count(),
             jax.device_count())


def shutdown(settings: DistributedSettings) -> None:
    """Leaves the run cleanly (every process reaches this after its last collective)."""
    if settings.enabled:
        import jax

        jax.distributed.shutdown()
