"""`llmos train`: parse the gin files and flags, then call the trainer with `model_dir`.

On several hosts each runs the same command and joins the others first
(`cli.distributed`: flags, `LLMOS_*` variables or the cluster's own).

Gin is parsed completely before the trainer is imported, so a bad file or
binding fails in a second, before `--model_dir` is touched. gin and the trainer
(and with it JAX) load inside the handler, so building the command is cheap.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

from llmos_jax.cli import distributed
from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.cli.shared_flags import GIN_SEARCH_PATH, gin_override_flag
from llmos_jax.errors import UserError

TRAIN_EXAMPLE = (
    "llmos train --gin_file=experiments/quickstart/quickstart.gin --model_dir=/tmp/llmos_quickstart "
    "--gin.train.num_steps=20"
)

TRAIN_FLAGS = (
    Flag(
        "gin_file",
        "PATH",
        "Gin file to parse; repeat to layer files, later ones win. Relative paths are "
        "searched in the cwd, each --gin_search_path, then the repository's gin/.",
        repeatable=True,
    ),
    gin_override_flag("--gin.train.num_steps=20", "--gin.make_optimizer.name=\"'lion'\""),
    Flag(
        "gin_bindings",
        "BINDING",
        "A whole gin statement, e.g. --gin_bindings='train.num_steps=20'; repeatable.",
        repeatable=True,
    ),
    GIN_SEARCH_PATH,
    Flag(
        "model_dir",
        "DIR",
        "Folder for checkpoints, metrics and config.gin; also bound to the gin "
        "macro MODEL_DIR.",
    ),
    *distributed.DISTRIBUTED_FLAGS,
    Flag(
        "track",
        "BOOL",
        "Log the run to MLflow ($MLFLOW_TRACKING_URI, else the embedded store in "
        "$LLMOS_HOME); same as --gin.train.track=True.",
        switch=True,
    ),
    Flag(
        "metrics_port",
        "PORT",
        "Serve llmos_train_* metrics for Prometheus at http://127.0.0.1:PORT/metrics "
        "(0: any free port); the same as --gin.train.metrics_port=PORT.",
    ),
    Flag("log_format", "FORMAT", "text (default) or json: one JSON object per log line."),
)


def train_command(
    train_fn: Callable[..., Any] | None = None,
    configurable_modules: Sequence[str] | None = None,
) -> Command:
    """Builds `llmos train`; tests inject `train_fn` and their own configurables.

    Args:
      train_fn: called as `train_fn(model_dir=...)` once gin is parsed; defaults
        to `llmos_jax.training.trainer.train`.
      configurable_modules: imported before parsing gin; defaults to
        `gin_config.CONFIGURABLE_MODULES`.
    """

    def run(flags: ParsedFlags) -> int:
        return _run_train(flags, train_fn, configurable_modules)

    return Command(
        name="train",
        summary="Train a model configured by gin files.",
        description="Train a model configured by gin files. Checkpoints, metrics and "
        "the operative config.gin are written to --model_dir.",
        usage="llmos train --gin_file=PATH [--gin_file=PATH ...] --model_dir=DIR "
        "[--gin.NAME=VALUE ...]",
        flags=TRAIN_FLAGS,
        example=TRAIN_EXAMPLE,
        run=run,
    )


def _run_train(
    flags: ParsedFlags,
    train_fn: Callable[..., Any] | None,
    configurable_modules: Sequence[str] | None,
) -> int:
    """Parses gin fully (so bad config fails before model_dir is touched), then trains."""
    gin_files = flags.all("gin_file")
    if not gin_files:
        raise UserError(f"llmos train needs at least one --gin_file, e.g. {TRAIN_EXAMPLE}")
    model_dir = flags.one("model_dir")
    if not model_dir:
        raise UserError(
            "llmos train needs --model_dir, the folder for checkpoints and metrics, "
            f"e.g. {TRAIN_EXAMPLE}"
        )
    settings = distributed.distributed_settings(flags)  # Checked before anything is parsed.
    _set_log_format(flags.one("log_format"))
    flag_bindings, flag_sources = flags.gin_bindings()
    bindings = [f"MODEL_DIR = {model_dir!r}", *flag_bindings]
    sources = ["--model_dir", *flag_sources]
    metrics_port = flags.one("metrics_port")
    if metrics_port is not None:
        if not metrics_port.isdigit():
            raise UserError(f"--metrics_port={metrics_port!r} must be a port number (0 picks a "
                            "free one).")
        bindings.append(f"train.metrics_port = {int(metrics_port)}")
        sources.append("--metrics_port")
    gin_config = _import_gin_config()
    if configurable_modules is None:
        configurable_modules = gin_config.CONFIGURABLE_MODULES
    gin_config.parse_gin(
        gin_files,
        bindings,
        flags.all("gin_search_path"),
        binding_sources=sources,
        configurable_modules=configurable_modules,
        defer_seqio=True,
    )
    from llmos_jax.cli import model_uris, run_tracking

    # train.init_from = 'models:/NAME@ALIAS'. Before joining (it needs no JAX): a host
    # whose registry lacks the version fails alone instead of leaving the others waiting.
    model_uris.resolve_init_from()
    # Before the trainer touches a device: every host joins, then all train together.
    distributed.initialize(settings)
    try:
        hooks = run_tracking.tracking_hooks(model_dir, track_flag=flags.boolean("track"))
        if train_fn is None:
            train_fn = importlib.import_module("llmos_jax.training.trainer").train
        train_fn(model_dir=model_dir, **({"hooks": hooks} if hooks else {}))
    finally:  # also when an alert rule stopped the run (SystemExit 70 or 75)
        distributed.shutdown(settings)
    return 0


def _set_log_format(log_format: str | None) -> None:
    """`--log_format=json` switches every log line to JSON (`monitoring.json_logs`)."""
    if log_format in (None, "text"):
        return
    if log_format != "json":
        raise UserError(f"--log_format={log_format} is not one of text, json.")
    from llmos_jax.monitoring.json_logs import use_json_logs

    use_json_logs()


def _import_gin_config() -> Any:
    """`cli.gin_config`, or a UserError naming the extras to install when gin is missing."""
    try:
        from llmos_jax.cli import gin_config
    except ModuleNotFoundError as error:
        if error.name != "gin":
            raise
        raise UserError(
            "gin-config is not installed; install the training extras with: "
            "pip install 'llmos_jax[train]'"
        ) from error
    return gin_config
