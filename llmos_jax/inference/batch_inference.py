"""Batch inference: many requests through one `DecodingEngine`, in resumable, host-sharded chunks.

Requests come from a JSONL file (one `{"prompt": ...}` object a line) or
from a seqio task split, and are cut into fixed chunks of `chunk_size`.
Host `i` of `n` decodes chunks `i, i + n, ...`; each finished chunk is
written atomically to `<output>.parts/chunk-NNNNN.jsonl` (a temporary file,
then a rename), so a rerun after an interruption skips the chunks already on
disk. When every chunk is there, the chief host merges them in order into
`<output>` (again atomically) and removes the parts. Every request's seed is
fixed by its position in the input, not by its chunk or host, so the merged
output is the same however the work was split or interrupted.

`<output>.parts/manifest.json` records what the parts were computed from
(the input's content hash, the chunking, the decode settings and the
checkpoint); a rerun with anything else refuses to mix its output with them.

A bad request never costs the others: a malformed JSONL line becomes an
error record for that line (or, with `strict`, a `UserError` naming it), and
a prompt `generate` cannot take (empty, longer than the cache) comes back as
that request's error.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from llmos_jax.errors import UserError
from llmos_jax.inference.completions import RequestResult
from llmos_jax.inference.decode_config import DecodeConfig
from llmos_jax.inference.decoding_engine import DecodingEngine
from llmos_jax.monitoring.progress import TrainProgress

PROMPT_KEYS = ("prompt", "inputs")
# `generate` numbers requests within its call; in a record the id says which one it is.
_CALL_POSITION = re.compile(r"^request \d+: ")
MANIFEST = "manifest.json"

# `generate` for one chunk: prompt token ids and seeds in, one result per prompt out.
GenerateFn = Callable[[list[list[int]], list[int]], list[RequestResult]]


@dataclasses.dataclass(frozen=True)
class Request:
    """One line of the output: a prompt to continue, or the reason it cannot be read.

    Attributes:
      id: The caller's id (JSONL `"id"`), else the line number / example index.
      prompt: The prompt text, as written back to the output.
      tokens: The prompt's token ids when known up front (task examples);
        None: encode `prompt` when its chunk is decoded.
      seed: The caller's sampling seed (JSONL `"seed"`); None: the config's
        seed plus the request's position in the input.
      error: Why the request cannot be decoded (a malformed line).
      extra: More fields for the output record (e.g. `line`, `targets`).
    """

    id: Any
    prompt: str | None = None
    tokens: tuple[int, ...] | None = None
    seed: int | None = None
    error: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class RequestSource:
    """The requests in input order, and what identifies the input for resuming."""

    requests: list[Request]
    description: dict[str, Any]

    @property
    def malformed(self) -> list[Request]:
        return [r for r in self.requests if r.error is not None]


def _line_error(path: str, line: int, problem: str, strict: bool) -> str:
    message = f"--input={path!r} line {line}: {problem}"
    if strict:
        raise UserError(f"{message}. Fix the line, or run without --strict=true to skip bad "
                        "lines (each gets an error record in the output).")
    return message


def _request_from_line(text: str, line: int, path: str, strict: bool) -> Request:
    """The request on one JSONL line, or an error request naming the line and the problem."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as error:
        return Request(id=line, error=_line_error(path, line, f"not valid JSON ({error.msg} at "
                                                  f"column {error.colno})", strict),
                       extra={"line": line})
    if not isinstance(record, dict):
        return Request(id=line, error=_line_error(
            path, line, f"expected a JSON object like {{\"prompt\": \"...\"}}, got "
            f"{type(record).__name__}", strict), extra={"line": line})
    request_id = record.get("id", line)
    keys = [key for key in PROMPT_KEYS if key in record]
    problem = None
    if len(keys) != 1:
        problem = (f"needs exactly one of {' or '.join(repr(k) for k in PROMPT_KEYS)}, found "
                   f"{keys or 'neither'}")
    elif not isinstance(record[keys[0]], str):
        problem = f"{keys[0]!r} must be a string, got {type(record[keys[0]]).__name__}"
    seed = record.get("seed")
    if problem is None and seed is not None and (isinstance(seed, bool)
                                                 or not isinstance(seed, int) or seed < 0):
        problem = f"'seed' must be a non-negative integer, got {seed!r}"
    if problem is not None:
        return Request(id=request_id, error=_line_error(path, line, problem, strict),
                       extra={"line": line})
    return Request(id=request_id, prompt=record[keys[0]], seed=seed, extra={"line": line})


def read_jsonl(path: str | os.PathLike, *, strict: bool = False) -> RequestSource:
    """Requests from a JSONL file; blank lines are ignored.

    Raises:
      UserError: the file is missing, or (with `strict`) a line is malformed.
    """
    file = pathlib.Path(path)
    if not file.is_file():
        raise UserError(f"--input={str(path)!r} is not a file; give a JSONL file with one "
                        "{\"prompt\": \"...\"} object per line.")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UserError(f"--input={str(path)!r} is not UTF-8 text (byte {error.start}); save "
                        "it as UTF-8.") from None
    requests = [_request_from_line(line, number, str(path), strict)
                for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    if not requests:
        raise UserError(f"--input={str(path)!r} holds no requests; write one JSON object per "
                        "line, e.g. {\"prompt\": \"Once upon a time\"}.")
    return RequestSource(requests, {"input": str(file.absolute()),
                                    "sha256": hashlib.sha256(data).hexdigest()})


def _task_examples(provider, split: str, sequence_length: Mapping[str, int] | None
                   ) -> Iterator[tuple[str, int, Mapping[str, Any]]]:
    tasks = getattr(provider, "tasks", None) or [provider]
    for task in tasks:
        dataset = task.get_dataset(sequence_length, split=split, shuffle=False, num_epochs=1)
        for index, example in enumerate(dataset.as_numpy_iterator()):
            yield task.name, index, example


def read_task(provider, split: str, *, vocabulary, feature: str | None = None,
              sequence_length: Mapping[str, int] | None = None,
              max_examples: int | None = None) -> RequestSource:
    """Requests from a seqio Task (or each Task of a Mixture) split, in split order.

    The prompt is the example's `feature` token ids (default `inputs`, else
    `targets`), as the task's preprocessors produced them (EOS included where
    the task adds it, which is how encoder inputs were trained); the
    `targets` text, when the prompt is not the targets, goes to the output.
    """
    features = provider.output_features
    feature = feature or ("inputs" if "inputs" in features else "targets")
    if feature not in features:
        raise UserError(f"--prompt_feature={feature!r}: task {provider.name!r} has features "
                        f"{sorted(features)}; pick one of them.")
    several = len(getattr(provider, "tasks", None) or [provider]) > 1
    requests = []
    for task_name, index, example in _task_examples(provider, split, sequence_length):
        if max_examples is not None and len(requests) >= max_examples:
            break
        tokens = tuple(int(t) for t in np.asarray(example[feature]).tolist())
        extra: dict[str, Any] = {}
        if feature != "targets" and "targets" in example:
            extra["targets"] = _decode(vocabulary, example["targets"])
        requests.append(Request(id=f"{task_name}/{index}" if several else index,
                                prompt=_decode(vocabulary, tokens), tokens=tokens, extra=extra))
    if not requests:
        raise UserError(f"task {provider.name!r} split {split!r} has no examples to decode.")
    return RequestSource(requests, {"task": provider.name, "split": split, "feature": feature,
                                    "max_examples": max_examples,
                                    "sequence_length": dict(sequence_length or {})})


def _decode(vocabulary, tokens) -> str:
    ids = [int(t) for t in np.asarray(tokens).tolist()]
    eos = getattr(vocabulary, "eos_id", None)
    return vocabulary.decode([t for t in ids if t != eos])


def generate_fn(model, params, config: DecodeConfig, *, vocabulary=None,
                batch_size: int | None = None) -> GenerateFn:
    """Decoding with the model, settings and vocabulary fixed; `batch_size` requests at a time.

    One `DecodingEngine` serves every chunk, so chunks of the same shapes
    reuse its compiled programs.
    """
    engine = DecodingEngine(model, params, vocabulary=vocabulary)

    def run(token_lists: list[list[int]], seeds: list[int]) -> list[RequestResult]:
        return engine.generate(token_lists, config, seeds=seeds, max_batch_size=batch_size)

    return run


def output_record(request: Request, result: RequestResult | None) -> dict[str, Any]:
    """The JSON object written for one request."""
    record: dict[str, Any] = {"id": request.id}
    if request.prompt is not None:
        record["prompt"] = request.prompt
    record.update(request.extra)
    error = request.error if result is None else result.error
    if error is not None:
        record["error"] = _CALL_POSITION.sub("", error)
        return record
    record["completions"] = [
        {"text": c.text, "tokens": list(c.tokens), "score": c.score,
         "finish_reason": c.finish_reason} for c in result.completions]
    return record


@dataclasses.dataclass
class InferenceSummary:
    """What one invocation did (this host's share)."""

    num_requests: int
    num_chunks: int
    chunks_decoded: int = 0
    chunks_skipped: int = 0
    errors: int = 0
    generated_tokens: int = 0
    decode_seconds: float = 0.0
    wall_seconds: float = 0.0
    merged: bool = False
    complete: bool = False

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_seconds if self.decode_seconds else 0.0


class ChunkFiles:
    """`<output>.parts/`: one JSONL file per finished chunk, and the manifest they belong to."""

    def __init__(self, output: str | os.PathLike):
        self.output = pathlib.Path(output).absolute()
        self.directory = self.output.with_name(self.output.name + ".parts")

    def path(self, chunk: int) -> pathlib.Path:
        return self.directory / f"chunk-{chunk:05d}.jsonl"

    def done(self, chunk: int) -> bool:
        return self.path(chunk).is_file()

    def claim(self, manifest: Mapping[str, Any]) -> None:
        """Starts or continues the parts of `manifest`; refuses parts of another run."""
        self.directory.mkdir(parents=True, exist_ok=True)
        file = self.directory / MANIFEST
        wanted = json.loads(json.dumps(dict(manifest), sort_keys=True, default=str))
        if file.is_file():
            found = json.loads(file.read_text())
            if found != wanted:
                changed = sorted(k for k in set(found) | set(wanted)
                                 if found.get(k) != wanted.get(k))
                raise UserError(
                    f"{self.directory} holds the finished chunks of another run (it differs in "
                    f"{', '.join(changed)}); delete that folder to start over, or pass another "
                    "--output.")
            return
        _write_atomically(file, json.dumps(wanted, indent=2, sort_keys=True) + "\n")

    def write(self, chunk: int, records: Sequence[Mapping[str, Any]]) -> None:
        _write_atomically(self.path(chunk), "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in records))

    def merge(self, num_chunks: int) -> None:
        """Concatenates every chunk in order into the output, then removes the parts."""
        missing = [c for c in range(num_chunks) if not self.done(c)]
        if missing:
            raise UserError(
                f"cannot merge {self.output}: chunks {missing[:10]}{'...' if len(missing) > 10 else ''} "
                f"are not in {self.directory}; a host has not finished them. Rerun the same "
                "command (finished chunks are kept) to complete them.")
        temporary = self.output.with_name(f".{self.output.name}.tmp-{os.getpid()}")
        with temporary.open("wb") as merged:
            for chunk in range(num_chunks):
                with self.path(chunk).open("rb") as part:
                    shutil.copyfileobj(part, merged)
        os.replace(temporary, self.output)
        shutil.rmtree(self.directory, ignore_errors=True)


def _write_atomically(path: pathlib.Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def run_batch_inference(source: RequestSource, decode: GenerateFn, output: str | os.PathLike, *,
                        encode: Callable[[str], Sequence[int]] | None = None,
                        base_seed: int = 0, chunk_size: int = 64,
                        manifest: Mapping[str, Any] | None = None,
                        process_index: int = 0, process_count: int = 1,
                        barrier: Callable[[], None] | None = None,
                        stop_after_chunks: int | None = None,
                        progress_bar: bool = True) -> InferenceSummary:
    """Decodes this host's chunks of `source` into `output`; the chief merges when all are done.

    Args:
      source: The requests, in input order.
      decode: Decodes one chunk's prompts (see `generate_fn`).
      output: The merged JSONL file; parts go to `<output>.parts/`.
      encode: Turns a text prompt into token ids (requests without `tokens`).
      base_seed: Request `k` without its own seed samples with `base_seed + k`.
      chunk_size: Requests per chunk, the unit of work that is saved and skipped.
      manifest: Settings the output depends on (decode config, checkpoint);
        recorded with the parts so a rerun with other settings is refused.
      process_index, process_count: This host and the number of hosts;
        host `i` decodes chunks `i, i + process_count, ...`.
      barrier: Waits for every host to finish its chunks (before the chief
        merges); None on one host.
      stop_after_chunks: Decode at most this many chunks in this call, then
        return without merging (time-boxed jobs; tests of resuming).
      progress_bar: Show requests done and tokens/s on stderr (chief only).

    Raises:
      UserError: bad settings, parts of another run, or chunks missing at merge.
    """
    if chunk_size <= 0:
        raise UserError(f"--chunk_size={chunk_size} must be positive.")
    if not 0 <= process_index < process_count:
        raise UserError(f"process_index={process_index} must be in [0, {process_count}).")
    started = time.perf_counter()
    requests = source.requests
    num_chunks = -(-len(requests) // chunk_size)
    files = ChunkFiles(output)
    files.claim({**source.description, **(manifest or {}), "chunk_size": chunk_size,
                 "num_requests": len(requests), "base_seed": base_seed})
    mine = list(range(process_index, num_chunks, process_count))
    summary = InferenceSummary(num_requests=len(requests), num_chunks=num_chunks)
    todo = [c for c in mine if not files.done(c)]
    summary.chunks_skipped = len(mine) - len(todo)
    if stop_after_chunks is not None:
        todo = todo[:stop_after_chunks]
    total = sum(len(requests[c * chunk_size:(c + 1) * chunk_size]) for c in mine)
    done = total - sum(len(requests[c * chunk_size:(c + 1) * chunk_size])
                       for c in mine if not files.done(c))
    with TrainProgress(total, done, enabled=progress_bar and process_index == 0) as progress:
        for chunk in todo:
            begin = chunk * chunk_size
            chunk_requests = requests[begin:begin + chunk_size]
            decode_started = time.perf_counter()
            results = _decode_chunk(chunk_requests, begin, decode, encode, base_seed)
            summary.decode_seconds += time.perf_counter() - decode_started
            records = [output_record(r, res) for r, res in zip(chunk_requests, results)]
            files.write(chunk, records)
            summary.chunks_decoded += 1
            summary.errors += sum("error" in record for record in records)
            summary.generated_tokens += sum(len(c.tokens) for res in results if res is not None
                                            for c in res.completions)
            done += len(chunk_requests)
            progress.update(done, tokens_per_second=summary.tokens_per_second)
    summary.complete = all(files.done(c) for c in mine)
    if summary.complete:
        if barrier is not None:
            barrier()
        if process_index == 0:
            files.merge(num_chunks)
            summary.merged = True
    summary.wall_seconds = time.perf_counter() - started
    return summary


def _decode_chunk(requests: Sequence[Request], begin: int, decode: GenerateFn,
                  encode: Callable[[str], Sequence[int]] | None,
                  base_seed: int) -> list[RequestResult | None]:
    """One result per request: None for requests that failed before decoding."""
    token_lists, seeds, positions = [], [], []
    for offset, request in enumerate(requests):
        if request.error is not None:
            continue
        if request.tokens is not None:
            tokens = list(request.tokens)
        elif encode is None:
            raise UserError("text prompts need a vocabulary to encode them; pass encode=...")
        else:
            tokens = [int(t) for t in encode(request.prompt or "")]
        token_lists.append(tokens)
        seeds.append(request.seed if request.seed is not None else base_seed + begin + offset)
        positions.append(offset)
    results: list[RequestResult | None] = [None] * len(requests)
    if token_lists:
        for offset, result in zip(positions, decode(token_lists, seeds)):
            results[offset] = result
    return results
