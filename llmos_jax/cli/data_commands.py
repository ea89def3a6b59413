"""`llmos tasks list`, `llmos vocab train` and `llmos vocab chars`: the data subcommands.

They take the same `--gin_file` / `--gin.NAME=VALUE` flags as `llmos train`
(so built-in tasks see the same data directory and task settings as a run)
plus `--data_dir`, shorthand for `--gin.data_dir.path`. Heavy imports
(seqio, TensorFlow, SentencePiece) happen inside the handlers.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from llmos_jax.cli.flags import Command, Flag, ParsedFlags
from llmos_jax.errors import UserError

VOCAB_TRAIN_EXAMPLE = (
    "llmos vocab train --task=tang_poems_bytes --vocab_size=8000 --model_type=unigram "
    "--output=vocab/tang_poems_8k"
)


def _gin_flags() -> list[Flag]:
    return [
        Flag("gin_file", "PATH", "Gin file whose task and data settings apply; repeatable.",
             repeatable=True),
        Flag("gin.", "VALUE", "Override one gin binding, e.g. "
             "--gin.register_tang_poems_spm.spm_model=\"'vocab/tang.model'\".", repeatable=True),
        Flag("data_dir", "DIR", "The data directory (same as --gin.data_dir.path; default: "
             "$LLMOS_DATA_DIR, else ../shared/data beside the repository)."),
    ]


def _apply_gin(flags: ParsedFlags) -> None:
    """Parses the gin flags (if any) so catalog tasks use the configured settings."""
    bindings, sources = [], []
    if flags.one("data_dir") is not None:
        bindings.append(f"data_dir.path = {flags.one('data_dir')!r}")
        sources.append("--data_dir")
    for given in flags.values:
        if given.flag.name == "gin.":
            bindings.append(f"{given.key} = {given.value}")
            sources.append(given.spelled)
    if not bindings and not flags.all("gin_file"):
        return
    from llmos_jax.cli import gin_config

    gin_config.parse_gin(flags.all("gin_file"), bindings, binding_sources=sources,
                         finalize=False)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    return ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1]
            for row in rows]


def tasks_listing() -> str:
    """The text of `llmos tasks list`: every Task and Mixture, built-ins registered first."""
    from llmos_jax.data import catalog, registry

    problems = catalog.register_builtin_tasks()
    summaries = [registry.summarize(name) for name in registry.registered_names()]
    lines = []
    for kind in ("task", "mixture"):
        chosen = [s for s in summaries if s.kind == kind]
        lines.append(f"{kind}s ({len(chosen)}):")
        rows = []
        for summary in chosen:
            features = ", ".join(f"{key} ({vocab})" for key, vocab in summary.features.items())
            rows.append((summary.name, "splits: " + ", ".join(summary.splits),
                         "features: " + features))
            if summary.mixes:
                rows.append(("", "mixes: " + ", ".join(f"{task} (rate {rate:g})"
                                                       for task, rate in summary.mixes), ""))
        lines += _table(rows) if rows else ["  (none)"]
    if problems:
        lines.append(f"built-in tasks not available ({len(problems)}):")
        lines += [f"  {name}: {reason}" for name, reason in problems.items()]
    return "\n".join(lines)


def _run_tasks_list(flags: ParsedFlags) -> int:
    _apply_gin(flags)
    print(tasks_listing())
    return 0


def _int_flag(flags: ParsedFlags, name: str, default: int | None = None) -> int | None:
    value = flags.one(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--{name}={value!r} is not an integer.") from None


def _float_flag(flags: ParsedFlags, name: str, default: float) -> float:
    value = flags.one(name)
    try:
        return default if value is None else float(value)
    except ValueError:
        raise UserError(f"--{name}={value!r} is not a number.") from None


def _file_texts(paths: Sequence[str]) -> Iterator[str]:
    """The UTF-8 text of each --input file (gzipped or not)."""
    import pathlib

    from llmos_jax.data.records import open_bytes

    for name in paths:
        path = pathlib.Path(name).expanduser()
        if not path.is_file():
            raise UserError(f"--input={name!r} does not exist; give a text file.")
        try:
            yield open_bytes(path).decode("utf-8")
        except UnicodeDecodeError as error:
            raise UserError(f"--input={name!r} is not UTF-8 text ({error.reason} at byte "
                            f"{error.start}); convert it to UTF-8.") from None


def _task_texts(task_name: str, split: str, feature: str) -> Iterator[str]:
    """The raw text of one feature of a Task's source split (before tokenization)."""
    import seqio

    from llmos_jax.errors import did_you_mean
    from llmos_jax.data.materialise import keep_tensorflow_off_accelerators
    from llmos_jax.data.providers import get_provider

    provider = get_provider(task_name, split, setting="--task", split_setting="--split")
    if not isinstance(provider, seqio.Task):
        raise UserError(f"--task={task_name!r} is a Mixture; name one of its Tasks.")
    keep_tensorflow_off_accelerators()
    dataset = provider.source.get_dataset(split=split, shuffle=False)
    if feature not in dataset.element_spec:
        names = list(dataset.element_spec)
        raise UserError(f"--feature={feature!r} is not a feature of {task_name!r}'s source "
                        f"({names}).{did_you_mean(feature, names)}")
    for example in dataset.as_numpy_iterator():
        yield example[feature].decode("utf-8")


def _training_texts(flags: ParsedFlags) -> Iterator[str]:
    inputs, task = flags.all("input"), flags.one("task")
    if bool(inputs) == bool(task):
        raise UserError("give either --input=FILE (repeatable) or --task=NAME, not both or "
                        f"neither, e.g. {VOCAB_TRAIN_EXAMPLE}")
    if inputs:
        return _file_texts(inputs)
    return _task_texts(task, flags.one("split") or "train", flags.one("feature") or "text")


def _run_vocab_train(flags: ParsedFlags) -> int:
    from llmos_jax.data import sentencepiece_vocab

    vocab_size, output = _int_flag(flags, "vocab_size"), flags.one("output")
    if vocab_size is None or not output:
        raise UserError(f"llmos vocab train needs --vocab_size and --output, e.g. {VOCAB_TRAIN_EXAMPLE}")
    _apply_gin(flags)
    model = sentencepiece_vocab.train_sentencepiece(
        _training_texts(flags), output, vocab_size,
        model_type=flags.one("model_type") or "unigram",
        character_coverage=_float_flag(flags, "character_coverage",
                                       sentencepiece_vocab.DEFAULT_CHARACTER_COVERAGE),
        byte_fallback=flags.boolean("byte_fallback"),
        max_sentences=_int_flag(flags, "max_sentences", 10_000_000),
    )
    print(f"wrote {model} and {model.with_suffix('.vocab')} ({vocab_size} pieces); point the "
          f"task's model setting at it, e.g. --gin.register_tang_poems_spm.spm_model=\"'{model}'\"")
    return 0


def _run_vocab_chars(flags: ParsedFlags) -> int:
    from llmos_jax.data.char_vocabulary import CharacterVocabulary

    output = flags.one("output")
    if not output or not flags.all("input"):
        raise UserError("llmos vocab chars needs --input=FILE (repeatable) and --output=FILE.json")
    vocabulary = CharacterVocabulary.from_texts(_file_texts(flags.all("input")))
    path = vocabulary.save_json(output)
    print(f"wrote {path}: {len(vocabulary.characters)} characters, vocab_size "
          f"{vocabulary.vocab_size}; use it with gin: CharacterVocabulary.json_path = '{path}'")
    return 0


def data_commands() -> dict[str, Command]:
    """The data subcommands, keyed by their two-word names."""
    text_source_flags = [
        Flag("input", "FILE", "Training text (UTF-8, .gz ok), one sentence per line; repeatable.",
             repeatable=True),
        Flag("task", "NAME", "Read the text of a registered Task's source instead of --input."),
        Flag("split", "SPLIT", "The --task split to read (default train, so validation text "
             "stays unseen)."),
        Flag("feature", "NAME", "The --task source feature holding the text (default text)."),
    ]
    return {
        "tasks list": Command(
            name="tasks list",
            summary="List registered seqio tasks and mixtures, built-ins included.",
            description="Registers the built-in tasks (reading no data), then prints every Task "
            "and Mixture with its splits and output features (with vocabulary), and why any "
            "built-in task is unavailable.",
            usage="llmos tasks list [--gin_file=PATH ...] [--gin.NAME=VALUE ...] [--data_dir=DIR]",
            flags=tuple(_gin_flags()),
            example="llmos tasks list --data_dir=/data/llmos",
            run=_run_tasks_list,
        ),
        "vocab train": Command(
            name="vocab train",
            summary="Train a SentencePiece vocabulary (unigram or BPE).",
            description="Trains a SentencePiece model with seqio's ids (0 pad, 1 EOS, 2 UNK), "
            "identity normalization (full-width CJK punctuation and spaces survive a round trip) "
            "and a line-break piece, and writes PREFIX.model and PREFIX.vocab.",
            usage="llmos vocab train (--input=FILE ... | --task=NAME) --vocab_size=N "
            "--output=PREFIX [--model_type=unigram|bpe] [--character_coverage=0.9995]",
            flags=(
                *text_source_flags,
                Flag("vocab_size", "N", "Pieces in the model, including the 3 special ids and "
                     "the line break."),
                Flag("model_type", "TYPE", "unigram (default) or bpe."),
                Flag("output", "PREFIX", "Output path prefix: writes PREFIX.model and PREFIX.vocab."),
                Flag("character_coverage", "F", "Share of characters kept as pieces; 0.9995 "
                     "(default) suits Chinese/Japanese, 1.0 small alphabets."),
                Flag("byte_fallback", "BOOL", "Spell uncovered characters as UTF-8 bytes "
                     "instead of UNK (default false)."),
                Flag("max_sentences", "N", "Read at most this many lines (default 10,000,000)."),
                *_gin_flags(),
            ),
            example=VOCAB_TRAIN_EXAMPLE,
            run=_run_vocab_train,
        ),
        "vocab chars": Command(
            name="vocab chars",
            summary="Write a character vocabulary (JSON) of some files' characters.",
            description="Collects the distinct characters of the --input files into a "
            "CharacterVocabulary JSON file (ids: 0 pad, 1 EOS, 2 UNK, then the characters in "
            "code-point order).",
            usage="llmos vocab chars --input=FILE [--input=FILE ...] --output=FILE.json",
            flags=(text_source_flags[0],
                   Flag("output", "FILE", "The JSON file to write.")),
            example="llmos vocab chars --input=input.txt --output=vocab/shakespeare_chars.json",
            run=_run_vocab_chars,
        ),
    }
