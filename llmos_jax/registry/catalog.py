"""Reading the registry for people: models, one version with its lineage, two side by side.

What `llmos models list|show|alias|compare` print. Every function returns
text (the CLI prints it), so tests read the same lines a user sees.
"""

from __future__ import annotations

import datetime
from typing import Any

from llmos_jax.errors import UserError
from llmos_jax.registry.compression_tags import describe as describe_compression
from llmos_jax.registry.model_uri import ModelUri
from llmos_jax.registry.store import Store
from llmos_jax.registry.versions import TAG, eval_tags, get_version

_MAX_LINEAGE = 50


def list_models(store: Store) -> str:
    """One line per registered model: latest version, aliases, description."""
    models = sorted(store.client.search_registered_models(), key=lambda m: m.name)
    if not models:
        return (f"no registered models in {store.tracking_uri}; register one with: llmos models "
                "register --model_dir=DIR --name=NAME")
    lines = [f"registered models in {store.tracking_uri}:"]
    for model in models:
        versions = store.client.search_model_versions(f"name='{model.name}'")
        latest = max((int(v.version) for v in versions), default=0)
        aliases = ", ".join(f"@{a} -> {v}" for a, v in sorted((model.aliases or {}).items()))
        lines.append(f"  {model.name}  versions 1..{latest}" + (f"  {aliases}" if aliases else ""))
    return "\n".join(lines)


def latest_version(store: Store, name: str) -> ModelUri:
    """`NAME/VERSION` of a model's newest version (a UserError listing models if unknown)."""
    numbers = [int(v.version) for v in store.client.search_model_versions(f"name='{name}'")]
    if not numbers:
        get_version(store, ModelUri(name=name, version="1"), flag="NAME")  # Names what exists.
        raise UserError(f"NAME={name!r} has no versions yet; register one with: llmos models "
                        f"register --model_dir=DIR --name={name}")
    return ModelUri(name=name, version=str(max(numbers)))


def lineage(store: Store, version: Any) -> list[Any]:
    """The version, its parent, the parent's parent...: oldest last."""
    chain, seen = [version], {(version.name, str(version.version))}
    while (parent := chain[-1].tags.get(f"{TAG}parent")) and len(chain) < _MAX_LINEAGE:
        name, _, number = parent.partition("/")
        if (name, number) in seen:
            break
        seen.add((name, number))
        try:
            chain.append(store.client.get_model_version(name, number))
        except Exception:  # A deleted parent: the chain ends with its name.
            break
    return chain


def show_version(store: Store, uri: ModelUri, *, with_config: bool = False) -> str:
    """A version's facts, lineage chain and eval results (and its gin config if asked)."""
    version = get_version(store, uri, flag="NAME")
    model = store.client.get_registered_model(uri.name)
    aliases = sorted(a for a, v in (model.aliases or {}).items() if str(v) == str(version.version))
    created = datetime.datetime.fromtimestamp(version.creation_timestamp / 1000,
                                              tz=datetime.timezone.utc)
    tags = version.tags
    lines = [f"models:/{version.name}/{version.version}" + (
        "  " + " ".join(f"@{a}" for a in aliases) if aliases else ""),
        f"  created: {created:%Y-%m-%d %H:%M:%S} UTC",
        f"  source run: {version.run_id}",
        f"  artifacts: {version.source}"]
    for key in ("model_family", "num_params", "data_task", "vocab_fingerprint", "model_dir"):
        if f"{TAG}{key}" in tags:
            lines.append(f"  {key.replace('_', ' ')}: {tags[TAG + key]}")
    lines += describe_compression(tags)
    chain = lineage(store, version)
    lines.append("  lineage: " + " <- ".join(f"{v.name}/{v.version}" for v in chain) + (
        f" <- {chain[-1].tags[TAG + 'parent']}" if chain[-1].tags.get(f"{TAG}parent") else ""))
    results = eval_tags(tags)
    lines.append("  metrics:" + ("" if results else " none recorded"))
    lines += [f"    {key}: {value:.6g}" for key, value in sorted(results.items())]
    config = _config_text(store, version)
    if config and with_config:
        lines.append("  gin config:")
        lines += [f"    {line}" for line in config.splitlines() if line.strip()
                  and not line.startswith("#")]
    elif config:
        bindings = sum(1 for line in config.splitlines() if " = " in line)
        lines.append(f"  gin config: {bindings} bindings (--config prints them)")
    return "\n".join(lines)


def _config_text(store: Store, version: Any) -> str | None:
    """The gin config registered beside the export (None if absent or unreachable)."""
    import mlflow

    config_uri = version.source.rsplit("/", 1)[0] + "/config.gin"
    try:
        return mlflow.artifacts.load_text(config_uri)
    except Exception:
        return None


def set_alias(store: Store, name: str, version: str, alias: str) -> str:
    """Points `alias` at `version` (which must exist); returns what moved."""
    if not version.isdigit():
        raise UserError(f"VERSION={version!r} must be a version number, e.g. "
                        f"llmos models alias {name} 3 {alias}")
    if alias.isdigit() or alias.lower() == "latest":
        raise UserError(f"ALIAS={alias!r}: an alias is a name such as 'champion' (numbers and "
                        "'latest' are reserved by MLflow).")
    get_version(store, ModelUri(name=name, version=version), flag="VERSION")
    before = dict(store.client.get_registered_model(name).aliases or {}).get(alias)
    before = None if before is None else str(before)
    store.client.set_registered_model_alias(name, alias, version)
    moved = f"from version {before}" if before else "new"
    return f"models:/{name}@{alias} -> version {version} ({moved})"


def compare_versions(store: Store, name: str, first: str, second: str) -> str:
    """Two versions' facts and metrics side by side, with the differences."""
    versions = [get_version(store, ModelUri(name=name, version=v), flag="VERSION")
                for v in (first, second)]
    rows = [("parent", *(v.tags.get(f"{TAG}parent", "-") for v in versions)),
            ("source run", *(v.run_id for v in versions))]
    for key in ("num_params", "data_task", "vocab_fingerprint"):
        rows.append((key.replace("_", " "), *(v.tags.get(f"{TAG}{key}", "-") for v in versions)))
    results = [eval_tags(v.tags) for v in versions]
    for metric in sorted(set(results[0]) | set(results[1])):
        values = [r.get(metric) for r in results]
        cells = [f"{v:.6g}" if v is not None else "-" for v in values]
        if None not in values:
            cells.append(f"{values[1] - values[0]:+.6g}")
        rows.append((metric, *cells))
    width = max(len(row[0]) for row in rows) + 2
    columns = max(len(cell) for row in rows for cell in row[1:3]) + 2
    lines = [f"{'':<{width}}{'version ' + first:<{columns}}{'version ' + second:<{columns}}"
             "change"]
    lines += [f"{row[0]:<{width}}" + "".join(f"{cell:<{columns}}" for cell in row[1:])
              for row in rows]
    return "\n".join(lines)
