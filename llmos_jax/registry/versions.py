"""Registered versions: an export copied into MLflow with its lineage, fetched back verified.

`register_export` uploads a run's self-contained export (`model_dir/export`)
as a new version's own artifact (a copy: deleting `model_dir` later loses
nothing) and records on the version what a language model needs: source run,
data task, vocabulary fingerprint, parameter count, eval results, its parent
version when warm-started from one, and the gin config beside the export.
`fetch_version` downloads a version into the cache under `LLMOS_HOME` and
checks every file against the export's checksums before anyone loads it.

A version's facts are MLflow tags prefixed `llmos.`; eval results are tags
`eval.TASK.METRIC` so the MLflow UI shows them too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pathlib
import shutil
import socket
import time
import uuid
from collections.abc import Mapping
from typing import Any

from llmos_jax.checkpoints.manifest import check_manifest, has_manifest
from llmos_jax.errors import UserError, did_you_mean
from llmos_jax.registry import compression_tags as compression
from llmos_jax.registry.model_uri import ModelUri
from llmos_jax.registry.store import Store

log = logging.getLogger("llmos_jax.registry")

TAG = "llmos."
EVAL_TAG = "eval."
EXPORT_ARTIFACT = "export"
CONFIG_ARTIFACT = "config.gin"
RUN_ID_FILE = "mlflow_run.json"  # model_dir: the tracked run's id (kept across resumes)
WARM_START_FILE = "warm_start.json"
_LOCKED_RETRIES = 20
# The export layout (`checkpoints.exports`, whose module loads Orbax and JAX: imported only
# where arrays are read, so `llmos models list|show|alias` stay quick).
PARAMS_DIRNAME = "params"
META_FILENAME = "meta.json"


@dataclasses.dataclass(frozen=True)
class FetchedVersion:
    """A registered version, downloaded and verified.

    Attributes:
      name: The registered model.
      version: Its version number (MLflow's string).
      path: The verified local export folder.
      tags: The version's tags.
    """

    name: str
    version: str
    path: pathlib.Path
    tags: Mapping[str, str]

    @property
    def config_gin(self) -> pathlib.Path | None:
        """The run's gin config registered beside the export (None if it had none)."""
        path = self.path.parent / CONFIG_ARTIFACT
        return path if path.is_file() else None

    @property
    def uri(self) -> str:
        return str(ModelUri(name=self.name, version=self.version))


def find_export(model_dir: str | os.PathLike) -> pathlib.Path:
    """The export to register: `model_dir/export`, or `model_dir` itself when it is one.

    Raises:
      UserError: no export (a run trained with `train.export = False`, or not finished).
    """
    path = pathlib.Path(model_dir).expanduser().absolute()
    for candidate in (path / "export", path):
        if (candidate / PARAMS_DIRNAME).is_dir() and (candidate / META_FILENAME).is_file():
            return candidate
    raise UserError(f"--model_dir={str(model_dir)!r} holds no export ({path}/export with "
                    f"{PARAMS_DIRNAME}/ and {META_FILENAME}); finish training with "
                    "train.export = True (the default), then register it.")


def vocabulary_fingerprint(meta: Mapping[str, Any]) -> str:
    """A short hash of the export's vocabulary description (same vocabulary, same hash)."""
    text = json.dumps(meta.get("vocabulary"), sort_keys=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def parameter_count(export: pathlib.Path) -> int:
    """Parameters in the export, from Orbax's metadata (no array is read)."""
    import jax
    import orbax.checkpoint as ocp

    metadata = ocp.StandardCheckpointer().metadata(export / PARAMS_DIRNAME)
    tree = getattr(metadata, "item_metadata", metadata)
    total = 0
    for leaf in jax.tree.leaves(tree, is_leaf=lambda x: hasattr(x, "shape")):
        shape = getattr(leaf, "shape", None)
        if shape is not None:
            total += int(__import__("math").prod(shape))
    return total


def latest_eval_results(model_dir: pathlib.Path) -> dict[str, float]:
    """The newest held-out metrics of a run (`metrics.jsonl`, split `eval`), as `eval.*` tags."""
    if not (model_dir / "metrics.jsonl").exists():
        return {}
    from llmos_jax.monitoring.metrics_history import read_metrics

    records = read_metrics(model_dir, split="eval")
    if not records:
        return {}
    last = records[-1]
    return {f"{EVAL_TAG}heldout.{key}": float(value) for key, value in last.items()
            if key not in ("step", "split", "time") and isinstance(value, (int, float))}


def parent_from_warm_start(store: Store, model_dir: pathlib.Path) -> str | None:
    """`NAME/VERSION` of the registered version a run was warm-started from, if any.

    `llmos train` points `InitFrom.checkpoint` at the version's verified copy
    in the cache (`model_cache/NAME/VERSION/export`), which `warm_start.json`
    records as its source.
    """
    report = model_dir / WARM_START_FILE
    if not report.exists():
        return None
    source = pathlib.Path(json.loads(report.read_text()).get("source", ""))
    try:
        name, version, *_ = source.absolute().relative_to(store.cache_dir).parts
    except ValueError:
        return None
    return f"{name}/{version}" if version.isdigit() else None


def _tracked_run_id(store: Store, model_dir: pathlib.Path) -> str | None:
    """The run that tracked `model_dir`, if it was tracked in this store."""
    path = model_dir / RUN_ID_FILE
    state = json.loads(path.read_text()) if path.exists() else {}
    return state.get("run_id") if state.get("tracking_uri") == store.tracking_uri else None


def register_export(store: Store, name: str, model_dir: str | os.PathLike, *,
                    run_id: str | None = None, parent: str | None = None,
                    extra_tags: Mapping[str, str] | None = None,
                    compression_method: str | None = None) -> Any:
    """Registers `model_dir`'s export as a new version of `name`; returns the `ModelVersion`.

    Args:
      store: The open store.
      name: The registered model (created on first use).
      model_dir: A run's model_dir (its `export/`) or an export folder.
      run_id: The MLflow run that trained it; default: the tracked run recorded
        in `model_dir`, else a new run made for the registration.
      parent: `NAME/VERSION` it was trained from; default: read from the
        run's warm start.
      extra_tags: More version tags.
      compression_method: "lora", "distillation" or "int8": the version is `parent`
        made smaller; its method and sizes are recorded (`registry.compression_tags`),
        and a LoRA run's adapters are registered beside the export.

    Raises:
      UserError: no export, a damaged export, or the store refused.
    """
    from mlflow.exceptions import MlflowException

    export = find_export(model_dir)
    run_dir = export.parent if export.name == "export" else export
    if not has_manifest(export):
        raise UserError(f"{export} has no checksums (exported by an older version); export it "
                        "again with `llmos train` before registering it.")
    damage = check_manifest(export)
    if damage is not None:
        raise UserError(f"{export} is damaged ({damage}); nothing was registered. Export it "
                        "again, then register.")
    meta = json.loads((export / META_FILENAME).read_text())
    parent = parent or parent_from_warm_start(store, run_dir)
    tags = {
        f"{TAG}model_dir": str(run_dir),
        f"{TAG}data_task": str(meta.get("data", {}).get("task_name", "")),
        f"{TAG}vocab_fingerprint": vocabulary_fingerprint(meta),
        f"{TAG}num_params": str(parameter_count(export)),
        f"{TAG}model_family": str(meta.get("model_family", "")),
        **({f"{TAG}parent": parent} if parent else {}),
        f"{TAG}param_bytes": str(compression.stored_bytes(export)),
        **{key: repr(value) for key, value in latest_eval_results(run_dir).items()},
        **dict(extra_tags or {}),
    }
    if compression_method is not None:
        tags.update(compression.compression_tags(
            compression_method, parent=parent, export=export, run_dir=run_dir, meta=meta,
            parent_tags=_parent_tags(store, parent)))
    run_id = run_id or _tracked_run_id(store, run_dir)
    if run_id is None:
        run = store.client.create_run(store.experiment_id, run_name=f"register {name}",
                                      tags={f"{TAG}kind": "registration"})
        run_id = run.info.run_id
        store.client.set_terminated(run_id)
    tags[f"{TAG}source_run"] = run_id
    # Each version's own copy, even when one run registers twice.
    folder = f"registered/{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    try:
        store.client.log_artifacts(run_id, str(export), f"{folder}/{EXPORT_ARTIFACT}")
        if (run_dir / CONFIG_ARTIFACT).exists():
            store.client.log_artifact(run_id, str(run_dir / CONFIG_ARTIFACT), folder)
        adapters = compression.adapter_folder(run_dir) if compression_method == "lora" else None
        if adapters is not None:
            store.client.log_artifacts(run_id, str(adapters),
                                       f"{folder}/{compression.ADAPTERS_DIRNAME}")
        source = f"{store.client.get_run(run_id).info.artifact_uri}/{folder}/{EXPORT_ARTIFACT}"
        _create_registered_model(store, name)
        version = _retry_locked(lambda: store.client.create_model_version(
            name, source=source, run_id=run_id, tags=tags,
            description=f"Registered from {run_dir}"))
    except MlflowException as error:
        raise UserError(f"could not register {run_dir} as {name!r} in {store.tracking_uri}: "
                        f"{error.message[:300]}. Nothing in {run_dir} was changed.") from None
    log.info("registered %s as models:/%s/%s (parent %s)", export, name, str(version.version),
             parent or "none")
    return version


def _parent_tags(store: Store, parent: str | None) -> dict[str, str] | None:
    """The tags of `parent` (NAME/VERSION), or None when it is not registered here."""
    name, _, version = (parent or "").partition("/")
    if not name or not version:
        return None
    try:
        return dict(store.client.get_model_version(name, version).tags)
    except Exception:  # MLflow raises its own errors for a missing version
        return None


def _create_registered_model(store: Store, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        _retry_locked(lambda: store.client.create_registered_model(name))
    except MlflowException as error:
        if error.error_code != "RESOURCE_ALREADY_EXISTS":
            raise


def _retry_locked(call):
    """Runs `call`, retrying while SQLite is locked by another registering process."""
    from mlflow.exceptions import MlflowException

    for attempt in range(_LOCKED_RETRIES):
        try:
            return call()
        except MlflowException as error:
            locked = "locked" in str(error) or "UNIQUE constraint" in str(error)
            if not locked or attempt == _LOCKED_RETRIES - 1:
                raise
            time.sleep(0.05 * (attempt + 1))
    raise AssertionError("unreachable")


def registered_names(store: Store) -> list[str]:
    return sorted(model.name for model in store.client.search_registered_models())


def get_version(store: Store, uri: ModelUri, *, flag: str = "--model") -> Any:
    """The `ModelVersion` a URI names.

    Raises:
      UserError: an unknown model (listing the registered ones, with close
        names), alias or version (listing the model's).
    """
    from mlflow.exceptions import MlflowException

    client = store.client
    try:
        model = client.get_registered_model(uri.name)
    except MlflowException:
        names = registered_names(store)
        listed = ", ".join(names) if names else "none yet"
        raise UserError(f"{flag}={str(uri)!r}: no registered model {uri.name!r} in "
                        f"{store.tracking_uri}.{did_you_mean(uri.name, names)} Registered: "
                        f"{listed}.") from None
    aliases = dict(model.aliases or {})
    if uri.alias is not None:
        if uri.alias not in aliases:
            listed = ", ".join(f"@{a} -> {v}" for a, v in sorted(aliases.items())) or "none"
            raise UserError(f"{flag}={str(uri)!r}: {uri.name!r} has no alias {uri.alias!r}."
                            f"{did_you_mean(uri.alias, aliases)} Its aliases: {listed}. Set "
                            f"one with: llmos models alias {uri.name} VERSION {uri.alias}")
        return client.get_model_version(uri.name, str(aliases[uri.alias]))
    try:
        return client.get_model_version(uri.name, uri.version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(
            f"name='{uri.name}'"))
        raise UserError(f"{flag}={str(uri)!r}: {uri.name!r} has no version {uri.version}; it "
                        f"has {', '.join(map(str, versions)) or 'none'}.") from None


def fetch_version(store: Store, uri: ModelUri, *, flag: str = "--model") -> FetchedVersion:
    """Downloads the version `uri` names into the cache and verifies it.

    A cached copy is verified again on every fetch; a damaged one is
    downloaded afresh.

    Raises:
      UserError: unknown name/alias/version; artifacts missing from the
        store; files that fail their checksums.
    """
    version = get_version(store, uri, flag=flag)
    target = store.cache_dir / uri.name / str(version.version) / EXPORT_ARTIFACT
    described = f"{flag}={str(uri)!r} (version {str(version.version)})"
    if _is_whole(target):
        return FetchedVersion(uri.name, str(version.version), target, dict(version.tags))
    # Unique across hosts sharing the cache (pids repeat between containers) and within one.
    partial = target.parent.with_name(f".{str(version.version)}.partial-{socket.gethostname()}"
                                      f"-{os.getpid()}-{uuid.uuid4().hex}")
    partial.mkdir(parents=True)
    try:
        downloaded = _download(store, version.source, partial, described)
        if not has_manifest(downloaded) or (damage := check_manifest(downloaded)) is not None:
            problem = "no checksums" if not has_manifest(downloaded) else str(damage)
            raise UserError(f"{described}: the registered files fail their checksums "
                            f"({problem}); the artifacts at {version.source} are damaged. "
                            f"Register the run again, or point the alias at another version.")
        target.parent.mkdir(parents=True, exist_ok=True)
        _download_config(store, version.source, target.parent)
        _install(downloaded, target, described)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return FetchedVersion(uri.name, str(version.version), target, dict(version.tags))


def _is_whole(folder: pathlib.Path) -> bool:
    return folder.is_dir() and has_manifest(folder) and check_manifest(folder) is None


def _install(downloaded: pathlib.Path, target: pathlib.Path, described: str) -> None:
    """Moves a verified download to `target`, unless a whole copy is there already.

    Another process (on this host or another sharing the cache) may have put a
    verified copy there meanwhile and be loading it: that copy is kept and ours
    discarded. Only a copy found damaged on a fresh check is removed, and it is
    first renamed aside (atomically), so no reader ever sees it half deleted.
    """
    for _ in range(3):
        if _is_whole(target):
            return  # Someone else's verified copy: use it; the caller discards ours.
        if target.exists():
            aside = target.with_name(f".{target.name}.damaged-{uuid.uuid4().hex}")
            try:
                os.replace(target, aside)
            except FileNotFoundError:
                pass  # Another process set it aside first.
            else:
                if _is_whole(aside):  # Replaced by a whole copy between the check and the move.
                    try:
                        os.rename(aside, target)
                        continue
                    except OSError:
                        pass  # Yet another copy is in place; it is checked on the next turn.
                shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(downloaded, target)
            return
        except OSError:  # Another process put a copy there first; it is checked next turn.
            continue
    if not _is_whole(target):
        raise UserError(f"{described}: could not put a verified copy at {target} (other "
                        "processes keep replacing it). Fetch it again.")


def _download(store: Store, source: str, into: pathlib.Path, described: str) -> pathlib.Path:
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        path = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(into),
                                                   tracking_uri=store.tracking_uri)
    except (MlflowException, OSError) as error:
        raise UserError(f"{described}: its artifacts could not be downloaded from {source} "
                        f"({str(error)[:200]}); they are missing from the store. Register the "
                        "run again, or point the alias at another version.") from None
    path = pathlib.Path(path)
    if not (path / PARAMS_DIRNAME).is_dir():
        raise UserError(f"{described}: the artifacts at {source} hold no {PARAMS_DIRNAME}/; "
                        "they are missing from the store. Register the run again.")
    return path


def _download_config(store: Store, source: str, into: pathlib.Path) -> None:
    """The version's config.gin (registered beside its export), if it has one."""
    import mlflow

    try:
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"{source.rsplit('/', 1)[0]}/{CONFIG_ARTIFACT}", dst_path=str(into),
            tracking_uri=store.tracking_uri)
    except Exception as error:  # Optional: eval and infer then need --gin_file.
        log.info("no %s beside %s (%s)", CONFIG_ARTIFACT, source, type(error).__name__)


def record_eval(store: Store, name: str, version: str,
                results: Mapping[str, Mapping[str, float]]) -> None:
    """Writes eval results onto a version as `eval.TASK.METRIC` tags."""
    for task, metrics in results.items():
        for metric, value in metrics.items():
            store.client.set_model_version_tag(name, version, f"{EVAL_TAG}{task}.{metric}",
                                               repr(float(value)))


def eval_tags(tags: Mapping[str, str]) -> dict[str, float]:
    """A version's eval results: `TASK.METRIC` -> value."""
    results = {}
    for key, value in tags.items():
        if key.startswith(EVAL_TAG):
            try:
                results[key[len(EVAL_TAG):]] = float(value)
            except ValueError:
                continue
    return results
