"""`llmos serve`: a trained model behind an OpenAI-compatible HTTP API.

The model comes from an export (`<model_dir>/export` or `best/`), a run's
model directory, or a Hugging Face directory, with no gin file
(`llmos_jax.serving.model_source`). Flag names follow vLLM's (`--max-slots`,
`--api-key`), so a team's scripts read the same.
"""

from __future__ import annotations

import logging
import os
import pathlib

from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.errors import UserError
from llmos_jax.registry.model_uri import is_model_uri

log = logging.getLogger("llmos_jax.serving")

SERVE_EXAMPLE = ("llmos serve --model=runs/shakespeare/export --max-slots=16 "
                 "--api-key-file=~/.llmos_key")


def serve_command() -> Command:
    """Builds the `llmos serve` command."""
    flags = (
        Flag("model", "PATH", "An export folder (model_dir/export or model_dir/best), a run's "
             "model_dir, a Hugging Face model folder (config.json, weights, tokenizer.json), "
             "or a registered version: models:/NAME@ALIAS or models:/NAME/VERSION."),
        Flag("follow-alias", "BOOL", "With --model=models:/NAME@ALIAS: when the alias moves, "
             "load and compile the new version in the background, then switch new requests to "
             "it (running ones finish on the old one). A version that fails to load leaves the "
             "old one serving.", switch=True),
        Flag("poll-interval", "SECONDS", "How often --follow-alias reads the alias (default 10)."),
        Flag("host", "ADDR", "Address to listen on (default 127.0.0.1: this machine only; "
             "0.0.0.0 to accept connections from other machines)."),
        Flag("port", "N", "TCP port (default 8000)."),
        Flag("api-key", "KEY", "Require 'Authorization: Bearer KEY' on /v1/* and /tokenize. "
             "Repeatable. Also read from the LLMOS_API_KEY environment variable."),
        Flag("api-key-file", "FILE", "Read keys from FILE, one per line (keeps them out of the "
             "process list)."),
        Flag("max-slots", "N", "Requests decoded together (default 8)."),
        Flag("max-queue", "N", "Requests that may wait for a slot; more get 429 with "
             "Retry-After (default 64)."),
        Flag("max-context", "N", "Tokens per sequence, prompt and output (default: the "
             "model's maximum)."),
        Flag("prefill-chunk", "N", "Prompt tokens prefilled per engine step, so a long prompt "
             "never stalls the running streams for long (default 64)."),
        Flag("prefill-batch", "N", "Waiting prompts prefilled together, so a burst of requests "
             "gets its first tokens sooner; the running streams wait for up to N x "
             "prefill-chunk prompt tokens per step (default 4)."),
        Flag("tensor-parallel", "N", "Split the model over N local devices (default 1)."),
        Flag("quantize", "int8", "Quantize the weights at load: int8 per output channel "
             "(dense layers and token embeddings; kept int8 on the device)."),
        Flag("lora", "NAME=PATH", "Also serve a LoRA adapter over the model (repeatable): "
             "requests whose `model` is NAME decode with it, in the same batch as the others. "
             "PATH: a train.lora run's model_dir/adapters, or a PEFT folder (GPT-2, Llama-style or T5 base)."),
        Flag("request-timeout", "SECONDS", "End requests still running after this long (504, or "
             "an error chunk when streaming); default: no limit."),
        Flag("chat-template", "FILE", "A Jinja2 chat template for /v1/chat/completions "
             "(default: the model's own, from tokenizer_config.json, if any)."),
        Flag("served-model-name", "NAME", "The model name clients send (default: the folder "
             "name)."),
        Flag("cors-origin", "URL", "Allow browser pages from this origin (repeatable; CORS is off "
             "by default)."),
        Flag("max-body-bytes", "N", "Larger request bodies get 413 (default 4194304)."),
        Flag("shutdown-grace", "SECONDS", "On SIGTERM, how long running requests may take to "
             "finish before they are aborted (default 30)."),
        Flag("log-prompts", "BOOL", "Write prompt text to the access log (default false: only "
             "token counts)."),
        Flag("log-level", "LEVEL", "debug, info (default), warning or error."),
    )
    # `--api-key` and `--cors-origin` may repeat.
    flags = tuple(Flag(f.name, f.metavar, f.help, repeatable=f.name in (
        "api-key", "cors-origin", "lora"), switch=f.switch) for f in flags)
    return Command(
        name="serve",
        summary="Serve a trained model over an OpenAI-compatible HTTP API.",
        description="Load an export, model directory or Hugging Face folder and serve it with "
        "continuous batching: /v1/completions, /v1/chat/completions (streaming or not), "
        "/v1/models, /tokenize, /detokenize, /health/live, /health/ready, /metrics "
        "(Prometheus) and a playground page at /. Ready once every shape is compiled; SIGTERM "
        "drains running requests.",
        usage="llmos serve --model=PATH [--host=127.0.0.1] [--port=8000] [--api-key=KEY | "
        "--api-key-file=FILE] [--max-slots=N] [--max-queue=N] [--request-timeout=S]",
        flags=flags,
        example=SERVE_EXAMPLE,
        run=run_serve,
    )


def _api_keys(flags: ParsedFlags) -> tuple[str, ...]:
    keys = [k for k in flags.all("api-key") if k]
    key_file = flags.one("api-key-file")
    if key_file:
        path = pathlib.Path(key_file).expanduser()
        try:
            lines = path.read_text().splitlines()
        except OSError as err:
            raise UserError(f"--api-key-file={key_file}: cannot read it ({err.strerror}); "
                            "give a readable file with one key per line.") from None
        keys += [line.strip() for line in lines if line.strip()]
        if not keys:
            raise UserError(f"--api-key-file={key_file} holds no key; put one key per line.")
    if os.environ.get("LLMOS_API_KEY"):
        keys.append(os.environ["LLMOS_API_KEY"])
    return tuple(keys)


def run_serve(flags: ParsedFlags) -> int:
    """Loads the model, then serves until SIGTERM (drains) or a second signal (stops)."""
    model_path = flags.one("model")
    if not model_path:
        raise UserError(f"llmos serve needs --model=PATH (an export folder, a run's model_dir or "
                        f"a Hugging Face folder), e.g. {SERVE_EXAMPLE}")
    level = (flags.one("log-level") or "info").lower()
    if level not in ("debug", "info", "warning", "error"):
        raise UserError(f"--log-level={level!r}: use debug, info, warning or error.")
    port = flags.positive_int("port", 8000)
    if port > 65535:
        raise UserError(f"--port={port} is not a TCP port (1-65535).")
    keys = _api_keys(flags)
    host = flags.one("host") or "127.0.0.1"
    if host not in ("127.0.0.1", "localhost", "::1") and not keys:
        log.warning("--host=%s accepts connections from other machines and no API key is set; "
                    "pass --api-key-file to require one", host)

    from llmos_jax import runtime

    runtime.configure_host_runtime()  # before JAX allocates: see llmos_jax/runtime.py
    from llmos_jax.serving.api import ApiOptions
    from llmos_jax.serving.lora_source import parse_adapter_flags
    from llmos_jax.serving.model_source import load_served_model
    from llmos_jax.serving.served_model import ServedModel
    from llmos_jax.serving.server import EngineOptions, serve

    try:
        api_options = ApiOptions(
            api_keys=keys, request_timeout=flags.positive_float("request-timeout", None),
            max_body_bytes=flags.positive_int("max-body-bytes", 4 * 1024 * 1024),
            cors_origins=tuple(flags.all("cors-origin")), log_prompts=flags.boolean(
                "log-prompts"))
    except ValueError as err:
        raise UserError(f"llmos serve: {err}") from None
    engine_options = EngineOptions(
        max_slots=flags.positive_int("max-slots", 8),
        max_queue=_queue_bound(flags),
        max_context=flags.positive_int("max-context", None),
        prefill_chunk=flags.positive_int("prefill-chunk", 64),
        prefill_batch=flags.positive_int("prefill-batch", 4))
    logging.getLogger("llmos_jax").setLevel(level.upper())

    def load(path: str, name: str | None) -> ServedModel:
        return load_served_model(path, name=flags.one("served-model-name") or name,
                                 chat_template_file=flags.one("chat-template"),
                                 tensor_parallel=flags.positive_int("tensor-parallel", 1),
                                 max_context=engine_options.max_context,
                                 quantize=flags.one("quantize"),
                                 lora=parse_adapter_flags(flags.all("lora")))

    version, follow = None, None
    if is_model_uri(model_path):
        served, version, follow = _registered(model_path, flags, load)
    else:
        if flags.boolean("follow-alias"):
            raise UserError("--follow-alias needs --model=models:/NAME@ALIAS (a registered "
                            f"model's alias), not a folder; got --model={model_path!r}.")
        served = load(model_path, None)
    log.info("serving %r%s from %s on http://%s:%d (%d slots, context %d)", served.name,
             f" version {version}" if version else "", served.source, host, port,
             engine_options.max_slots, engine_options.max_context or served.max_context)
    serve(served, engine_options=engine_options, api_options=api_options, host=host, port=port,
          shutdown_grace=flags.positive_float("shutdown-grace", 30.0), log_level=level,
          version=version, follow=follow)
    return 0


def _registered(model_uri: str, flags: ParsedFlags, load):
    """(model, version, follow settings or None) for `--model=models:/...`."""
    from llmos_jax.registry.model_uri import ModelUri, parse_model_uri
    from llmos_jax.registry.store import open_store
    from llmos_jax.registry.versions import fetch_version, get_version
    from llmos_jax.serving.live_model import Follow

    uri = parse_model_uri(model_uri, flag="--model")
    store = open_store()
    fetched = fetch_version(store, uri, flag="--model")
    served = load(str(fetched.path), uri.name)
    if not flags.boolean("follow-alias"):
        return served, fetched.version, None
    if uri.alias is None:
        raise UserError(f"--follow-alias follows an alias; --model={model_uri!r} names a fixed "
                        f"version. Use --model=models:/{uri.name}@champion (or another alias).")

    def target() -> str:
        return str(get_version(store, uri, flag="--model").version)

    def load_version(version: str) -> ServedModel:
        fetched = fetch_version(store, ModelUri(name=uri.name, version=version), flag="--model")
        return load(str(fetched.path), uri.name)

    interval = flags.positive_float("poll-interval", 10.0)
    return served, fetched.version, Follow(target, load_version, interval)


def _queue_bound(flags: ParsedFlags) -> int:
    value = flags.one("max-queue") or "64"
    if not value.isdigit():
        raise UserError(f"--max-queue={value!r} must be a whole number >= 0.")
    return int(value)
