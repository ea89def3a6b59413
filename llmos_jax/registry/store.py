"""Where runs and models live: a team's MLflow server, or one embedded store per user.

With `MLFLOW_TRACKING_URI` set, every command talks to that server (its
registry too, unless `MLFLOW_REGISTRY_URI` names another). Without it, runs
and models go to `LLMOS_HOME` (default `~/.llmos`): `mlflow.db` (SQLite, the
tracking store and the registry) and `mlartifacts/` beside it, so
`llmos models list` answers from any folder, offline, with no server.

MLflow retries an unreachable server for minutes by default; unless the user
set them, `open_store` bounds each HTTP call (`MLFLOW_HTTP_REQUEST_TIMEOUT`,
`MLFLOW_HTTP_REQUEST_MAX_RETRIES`), so a dead server costs seconds, not
minutes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
from typing import Any

from llmos_jax.errors import UserError

log = logging.getLogger("llmos_jax.registry")

EXPERIMENT_NAME = "llmos"
DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "mlartifacts"
CACHE_DIRNAME = "model_cache"
# Each HTTP call to a tracking server: this many seconds, this many retries.
HTTP_TIMEOUT_SECONDS = "10"
HTTP_MAX_RETRIES = "1"


def llmos_home() -> pathlib.Path:
    """`LLMOS_HOME`, else `~/.llmos`: the embedded store and the downloaded versions."""
    return pathlib.Path(os.environ.get("LLMOS_HOME") or "~/.llmos").expanduser().absolute()


def import_mlflow() -> Any:
    """The `mlflow` module, or a UserError naming the extra to install."""
    try:
        import mlflow
    except ModuleNotFoundError as error:
        if not (error.name or "").startswith("mlflow"):
            raise
        raise UserError("model management needs MLflow: pip install 'llmos_jax[registry]'"
                        ) from None
    return mlflow


@dataclasses.dataclass
class Store:
    """An open MLflow store: its client and the experiment llmos runs go to.

    Attributes:
      client: An `mlflow.MlflowClient` on the tracking and registry URIs.
      tracking_uri: Where runs go (shown in messages).
      experiment_id: The `llmos` experiment (its artifacts under the store's
        artifact folder when embedded).
      cache_dir: Where versions are downloaded to (under `LLMOS_HOME`).
      embedded: Whether this is the per-user embedded store.
    """

    client: Any
    tracking_uri: str
    registry_uri: str
    cache_dir: pathlib.Path
    embedded: bool
    _experiment_id: str | None = None

    @property
    def experiment_id(self) -> str:
        """The `llmos` experiment's id (created on first use)."""
        if self._experiment_id is None:
            self._experiment_id = _experiment(self)
        return self._experiment_id


def bound_http_retries() -> None:
    """Bounds MLflow's HTTP timeout and retries, unless the user set them."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", HTTP_TIMEOUT_SECONDS)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", HTTP_MAX_RETRIES)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def open_store(tracking_uri: str | None = None) -> Store:
    """The store `MLFLOW_TRACKING_URI` names, else the embedded one under `LLMOS_HOME`.

    Args:
      tracking_uri: Overrides the environment (tests, `--tracking_uri`).
    """
    bound_http_retries()
    mlflow = import_mlflow()
    home = llmos_home()
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    embedded = not uri
    if embedded:
        try:
            home.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise UserError(f"LLMOS_HOME={str(home)!r}: cannot create it ({error.strerror}); "
                            "set LLMOS_HOME to a writable folder.") from None
        uri = f"sqlite:///{home / DB_FILENAME}"
    registry_uri = os.environ.get("MLFLOW_REGISTRY_URI") or uri
    logging.getLogger("alembic").setLevel(logging.WARNING)
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
    return Store(client=client, tracking_uri=uri, registry_uri=registry_uri,
                 cache_dir=home / CACHE_DIRNAME, embedded=embedded)


def _experiment(store: Store) -> str:
    """The id of the `llmos` experiment, created (with its artifact folder) if missing."""
    from mlflow.exceptions import MlflowException

    found = store.client.get_experiment_by_name(EXPERIMENT_NAME)
    if found is not None:
        return found.experiment_id
    # Embedded: artifacts beside the database, never in the current folder (MLflow's default).
    location = ((llmos_home() / ARTIFACTS_DIRNAME).as_uri() if store.embedded else None)
    try:
        return store.client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
    except MlflowException:  # Another process created it first.
        return store.client.get_experiment_by_name(EXPERIMENT_NAME).experiment_id
