"""What `llmos train` adds for MLflow: the tracking hook and `models:/` warm starts.

Training never imports the registry: this module (in the CLI, above both)
builds `registry.tracking.MlflowTracking` from the parsed gin config when
`--track`, `train.track = True` or `train.register_as = 'NAME'` asks for it,
and hands it to `train(hooks=...)`.
"""

from __future__ import annotations

import pathlib
import subprocess
from typing import Any

import llmos_jax


def code_version() -> str:
    """The git commit of the llmos_jax source (`+dirty` with local edits), or 'unknown'."""
    folder = pathlib.Path(llmos_jax.__file__).parent
    try:
        commit = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"],
                                capture_output=True, text=True, timeout=10, check=True)
        status = subprocess.run(["git", "-C", str(folder), "status", "--porcelain",
                                 "--untracked-files=no"], capture_output=True, text=True,
                                timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit.stdout.strip() + ("+dirty" if status.stdout.strip() else "")


def tracking_hooks(model_dir: str, *, track_flag: bool) -> list[Any]:
    """The MLflow hook when tracking is asked for (else none). Gin must be parsed."""
    from llmos_jax.cli.model_uris import train_bindings

    bindings = train_bindings()
    register_as = bindings.get("register_as")
    if not (track_flag or bindings.get("track") or register_as):
        return []
    import gin
    import jax

    from llmos_jax.training.train_config import TrainConfig
    from llmos_jax.registry.store import bound_http_retries, import_mlflow, open_store
    from llmos_jax.registry.tracking import MlflowTracking, gin_params

    import_mlflow()  # A missing extra fails now, not at the end of training.
    bound_http_retries()
    config = TrainConfig.from_gin()
    devices = jax.devices()
    tags = {"llmos.code_version": code_version(), "mlflow.source.git.commit": code_version(),
            "llmos.mesh": repr(config.mesh_config),
            "llmos.devices": f"{len(devices)} x {devices[0].device_kind}",
            "llmos.data_task": str(config.task_name),
            "llmos.model_dir": str(pathlib.Path(model_dir).absolute())}
    return [MlflowTracking(open_store, model_dir, params=gin_params(gin.config_str()), tags=tags,
                           register_as=register_as)]
