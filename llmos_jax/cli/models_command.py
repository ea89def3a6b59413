"""`llmos models ...`: registered versions on MLflow, from the command line.

`list`, `show NAME[@ALIAS|/VERSION]`, `alias NAME VERSION ALIAS`, `compare
NAME V1 V2`, `register --model_dir=DIR --name=NAME` and `promote NAME
--candidate=V --alias=A --metric=M --task=T` (the gate that moves an alias
only when the candidate wins). The store is `MLFLOW_TRACKING_URI`'s server,
else the per-user embedded one under `LLMOS_HOME` (`registry.store`).
"""

from __future__ import annotations

from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.cli.shared_flags import GIN_SEARCH_PATH, gin_override_flag
from llmos_jax.errors import UserError

_STORE_NOTE = ("The store is $MLFLOW_TRACKING_URI, else the embedded one in $LLMOS_HOME "
               "(default ~/.llmos).")
PROMOTE_EXAMPLE = ("llmos models promote shakespeare --candidate=2 --alias=champion "
                   "--metric=loss --task=tiny_shakespeare_char --lower-is-better")


def _positional(flags: ParsedFlags, command: Command) -> tuple[str, ...]:
    if len(flags.positional) != len(command.positionals):
        raise UserError(f"llmos {command.name} needs {' '.join(command.positionals)}, e.g. "
                        f"{command.example}")
    return flags.positional


def _store(flags: ParsedFlags):
    from llmos_jax.registry.store import open_store

    return open_store(flags.one("tracking_uri"))


def _list(flags: ParsedFlags) -> int:
    from llmos_jax.registry.catalog import list_models

    print(list_models(_store(flags)))
    return 0


def _show(flags: ParsedFlags) -> int:
    from llmos_jax.registry.catalog import latest_version, show_version
    from llmos_jax.registry.model_uri import parse_model_ref

    (ref,) = _positional(flags, COMMANDS["models show"])
    store = _store(flags)
    uri = parse_model_ref(ref)
    print(show_version(store, latest_version(store, uri) if isinstance(uri, str) else uri,
                       with_config=flags.boolean("config")))
    return 0


def _alias(flags: ParsedFlags) -> int:
    from llmos_jax.registry.catalog import set_alias

    name, version, alias = _positional(flags, COMMANDS["models alias"])
    print(set_alias(_store(flags), name, version, alias))
    return 0


def _compare(flags: ParsedFlags) -> int:
    from llmos_jax.registry.catalog import compare_versions

    name, first, second = _positional(flags, COMMANDS["models compare"])
    print(compare_versions(_store(flags), name, first, second))
    return 0


def _register(flags: ParsedFlags) -> int:
    from llmos_jax.registry.versions import register_export

    model_dir, name = flags.one("model_dir"), flags.one("name")
    if not model_dir or not name:
        raise UserError("llmos models register needs --model_dir and --name, e.g. "
                        f"{COMMANDS['models register'].example}")
    version = register_export(_store(flags), name, model_dir, parent=flags.one("parent"),
                              compression_method=flags.one("compression"))
    print(f"registered {model_dir} as models:/{name}/{version.version}")
    return 0


def _promote(flags: ParsedFlags) -> int:
    from llmos_jax.cli.eval_command import evaluate_checkpoint
    from llmos_jax.registry.promotion import promote

    (name,) = _positional(flags, COMMANDS["models promote"])
    candidate, alias = flags.one("candidate"), flags.one("alias") or "champion"
    metric, task = flags.one("metric"), flags.one("task")
    if not (candidate and metric and task):
        raise UserError(f"llmos models promote needs --candidate, --metric and --task, e.g. "
                        f"{PROMOTE_EXAMPLE}")
    higher, lower = flags.boolean("higher-is-better"), flags.boolean("lower-is-better")
    if higher == lower:
        raise UserError("llmos models promote needs exactly one of --higher-is-better and "
                        "--lower-is-better (which way the metric improves).")
    try:
        min_delta = float(flags.one("min-delta") or 0.0)
    except ValueError:
        raise UserError(f"--min-delta={flags.one('min-delta')!r} is not a number.") from None
    bindings, sources = flags.gin_bindings()
    extra_gin = flags.all("gin_file")

    def evaluate(fetched):
        if fetched.config_gin is None:
            raise UserError(f"{fetched.uri} was registered without its config.gin; register "
                            "it again from its model_dir.")
        return evaluate_checkpoint(
            str(fetched.path), [str(fetched.config_gin), *extra_gin], bindings, sources,
            search_paths=flags.all("gin_search_path"), task=task, split=flags.one("split"),
            max_examples=flags.positive_int("max_examples", None),
            output_dir=str(fetched.path.parent / "promote_eval"))[2]

    result = promote(_store(flags), name, candidate, alias, metric=metric, higher_is_better=higher,
                     min_delta=min_delta, evaluate=evaluate)
    print(result.reason)
    return 0


TRACKING_URI = Flag("tracking_uri", "URI", "The MLflow server or store (default: "
                    "$MLFLOW_TRACKING_URI, else the embedded store in $LLMOS_HOME).")


def _command(name: str, summary: str, usage: str, example: str, run, flags=(),
             positionals=()) -> Command:
    return Command(name=name, summary=summary, description=f"{summary} {_STORE_NOTE}",
                   usage=usage, flags=(*flags, TRACKING_URI), example=example,
                   run=run, positionals=tuple(positionals))


_PROMOTE_FLAGS = (
    Flag("candidate", "VERSION", "The version that may take the alias."),
    Flag("alias", "ALIAS", "The alias to move (default champion)."),
    Flag("metric", "NAME", "The metric that decides (a name the task reports, or TASK/NAME)."),
    Flag("task", "NAME", "The seqio Task both versions are evaluated on."),
    Flag("split", "NAME", "Its held-out split (default: the run's eval split)."),
    Flag("higher-is-better", "BOOL", "The metric improves upward (accuracy).", switch=True),
    Flag("lower-is-better", "BOOL", "The metric improves downward (loss, perplexity).",
         switch=True),
    Flag("min-delta", "D", "The candidate must win by at least this much (default 0)."),
    Flag("max_examples", "N", "Evaluate only the first N examples."),
    Flag("gin_file", "PATH", "More gin applied to both evaluations (after each version's own "
         "config.gin), e.g. to register the task; repeatable.", repeatable=True),
    gin_override_flag("--gin.register_text_file_task.path=\"'heldout.txt'\"",
                      "--gin.DecodeConfig.method=\"'greedy'\""),
    GIN_SEARCH_PATH,
)

COMMANDS: dict[str, Command] = {
    "models list": _command("models list", "List registered models, their versions and aliases.",
                            "llmos models list", "llmos models list", _list),
    "models show": _command(
        "models show", "Show a version: facts, lineage chain, metrics and gin config.",
        "llmos models show NAME[@ALIAS|/VERSION]", "llmos models show shakespeare@champion",
        _show, positionals=("NAME[@ALIAS|/VERSION]",),
        flags=(Flag("config", "BOOL", "Also print the run's gin config.", switch=True),)),
    "models alias": _command(
        "models alias", "Point an alias (champion, staging...) at a version.",
        "llmos models alias NAME VERSION ALIAS", "llmos models alias shakespeare 2 champion",
        _alias, positionals=("NAME", "VERSION", "ALIAS")),
    "models compare": _command(
        "models compare", "Compare two versions' facts and metrics side by side.",
        "llmos models compare NAME V1 V2", "llmos models compare shakespeare 1 2", _compare,
        positionals=("NAME", "V1", "V2")),
    "models register": _command(
        "models register", "Register a run's export as a new version (its own copy).",
        "llmos models register --model_dir=DIR --name=NAME [--parent=NAME/VERSION] "
        "[--compression=lora|distillation|int8]",
        "llmos models register --model_dir=runs/shakespeare --name=shakespeare", _register,
        flags=(Flag("model_dir", "DIR", "The run (its export/) or an export folder."),
               Flag("name", "NAME", "The registered model (created on first use)."),
               Flag("parent", "NAME/VERSION", "The version it was trained from (default: "
                    "read from the run's warm start)."),
               Flag("compression", "METHOD", "lora, distillation or int8: the version is "
                    "--parent made smaller; records the method, parameter bytes and size "
                    "against the parent (lora: also registers model_dir/adapters; int8: "
                    "serve it with --quantize=int8)."))),
    "models promote": _command(
        "models promote", "Move an alias to a candidate only if it wins on a held-out task.",
        "llmos models promote NAME --candidate=V --alias=ALIAS --metric=M --task=T "
        "(--higher-is-better | --lower-is-better) [--min-delta=D]",
        PROMOTE_EXAMPLE, _promote, flags=_PROMOTE_FLAGS, positionals=("NAME",)),
}


def models_commands() -> dict[str, Command]:
    """The `llmos models ...` commands, keyed by their two-word names."""
    return dict(COMMANDS)
