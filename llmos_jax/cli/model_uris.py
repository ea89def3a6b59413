"""`models:/NAME@ALIAS` and `models:/NAME/VERSION` wherever a checkpoint or export path goes.

The CLI turns a URI into the verified local copy of that version
(`registry.versions.fetch_version`) before anything below it runs, so
evaluation, inference, serving and warm starts keep taking paths. A version
carries its run's `config.gin`, which stands in for `--gin_file` when none is
given.
"""

from __future__ import annotations

from typing import Any

from llmos_jax.cli.flags import ParsedFlags
from llmos_jax.cli.shared_flags import RUN_GIN_FILE, required
from llmos_jax.errors import UserError
from llmos_jax.registry.model_uri import is_model_uri, parse_model_uri


def fetch(value: str, *, flag: str, store: Any = None) -> Any:
    """The `FetchedVersion` a `models:/` URI names (downloaded and verified)."""
    from llmos_jax.registry.store import open_store
    from llmos_jax.registry.versions import fetch_version

    uri = parse_model_uri(value, flag=flag)
    return fetch_version(store or open_store(), uri, flag=flag)


def run_source(flags: ParsedFlags, *, command: str, example: str
               ) -> tuple[str, list[str], Any]:
    """(checkpoint path, gin files, fetched version or None) for `llmos eval`/`infer`.

    Raises:
      UserError: no `--checkpoint`; no `--gin_file` for a path (a registered
        version without its config.gin needs one too).
    """
    checkpoint = required(flags, "checkpoint", command=command, example=example,
                          what="the run's model_dir, an export folder or models:/NAME@ALIAS")
    gin_files = flags.all(RUN_GIN_FILE.name)
    fetched = None
    if is_model_uri(checkpoint):
        fetched = fetch(checkpoint, flag="--checkpoint")
        checkpoint = str(fetched.path)
        if not gin_files and fetched.config_gin is not None:
            gin_files = [str(fetched.config_gin)]
    if not gin_files:
        raise UserError(f"llmos {command} needs --gin_file, the run's gin file, e.g. {example}")
    return checkpoint, gin_files, fetched


def train_bindings() -> dict[str, Any]:
    """The parsed `train.NAME` bindings (empty when the trainer's config is not registered)."""
    import gin

    try:
        return dict(gin.get_bindings("llmos_jax.training.trainer.train"))
    except (ValueError, KeyError):
        return {}


def resolve_init_from() -> str | None:
    """Points a `models:/` warm start at the version's verified copy; returns the URI.

    `InitFrom.checkpoint = 'models:/NAME@champion'` (or the short
    `train.init_from = 'models:/...'`) is rebound to the downloaded export,
    whose cache path `warm_start.json` records, so registering the new run
    names the version as its parent. Gin must already be parsed.
    """
    import gin

    short = train_bindings().get("init_from")
    try:
        long = gin.query_parameter("InitFrom.checkpoint")
    except ValueError:
        long = None
    uri = short if isinstance(short, str) and is_model_uri(short) else (
        long if isinstance(long, str) and is_model_uri(long) else None)
    if uri is None:
        return None
    fetched = fetch(uri, flag="train.init_from" if uri == short else "InitFrom.checkpoint")
    with gin.unlock_config():
        gin.parse_config([f"InitFrom.checkpoint = {str(fetched.path)!r}"] + (
            ["train.init_from = @InitFrom()"] if uri == short else []))
    return uri
