"""Training metrics written twice: a JSONL file for scripts and TensorBoard events for people.

``model_dir/metrics.jsonl`` holds one JSON object per line::

    {"step": 100, "split": "train", "time": 1717000000.0, "loss": 2.31, ...}

It is opened in append mode, so a resumed run continues the same file.
JSON has no NaN or infinity, so non-finite values are written as the strings
``"nan"``, ``"inf"`` and ``"-inf"``. Text records use split ``"text"`` and map
their tag to the text.

TensorBoard events go to ``model_dir/tensorboard/<split>``, so train and eval
appear as separate runs. Writing is synchronous: events go straight through
tensorboardX's ``EventsWriter`` rather than ``SummaryWriter``, whose background
queue makes ``flush()`` return before queued events reach the file. The caller
decides when to fetch values from devices.
"""

import importlib
import json
import math
import os
import pathlib
import sys
import time
import types
from collections.abc import Mapping
from typing import IO, Any

import numpy as np

from llmos_jax.errors import UserError


def _import_tensorboardx_without_torch() -> None:
    """Imports tensorboardX without letting it import PyTorch.

    tensorboardX's package ``__init__`` imports its ``SummaryWriter``, which
    tries ``import torch`` only to accept torch tensors; every submodule import
    runs that ``__init__`` first. Where torch is installed that cost ~1.5 s and
    ~300 MB at start-up of every run for nothing (we write numpy floats).
    Marking torch unimportable for the duration makes its ``try: import
    torch`` take the ImportError branch it already has; a torch imported
    earlier (or later, by code that needs it) is left alone.
    """
    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        return
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` -> ImportError
    try:
        importlib.import_module("tensorboardX")
    finally:
        del sys.modules["torch"]


_import_tensorboardx_without_torch()
from tensorboardX import event_file_writer  # noqa: E402
from tensorboardX import summary as tensorboard_summary  # noqa: E402
from tensorboardX.proto import event_pb2  # noqa: E402

METRICS_FILENAME = "metrics.jsonl"
TENSORBOARD_DIRNAME = "tensorboard"
TEXT_SPLIT = "text"
_RESERVED_KEYS = ("step", "split", "time")


def _check_not_reserved(name: str) -> None:
    if name in _RESERVED_KEYS:
        raise UserError(
            f"Metric or text tag {name!r} is reserved in {METRICS_FILENAME}; rename it."
        )


def _to_float(name: str, value: Any) -> float:
    array = np.asarray(value)
    if array.ndim != 0:
        raise ValueError(f"metric {name!r} must be a scalar, got an array of shape {array.shape}.")
    return float(array)


def _json_number(value: float) -> float | str:
    """JSON has no NaN/inf: write those as "nan", "inf", "-inf"."""
    if math.isnan(value):
        return "nan"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return value


class MetricsWriter:
    """Writes scalars and text to ``metrics.jsonl`` and TensorBoard under ``model_dir``.

    With ``enabled=False`` (every process but the first in a multi-host run)
    nothing is created or written, so callers need no branching.
    """

    def __init__(self, model_dir: str | os.PathLike, *, enabled: bool = True) -> None:
        self.model_dir = pathlib.Path(model_dir)
        self.enabled = enabled
        self._jsonl: IO[str] | None = None
        self._event_writers: dict[str, Any] = {}
        if not enabled:
            return
        try:
            self.model_dir.mkdir(parents=True, exist_ok=True)
            self._jsonl = open(self.model_dir / METRICS_FILENAME, "a", encoding="utf-8")
        except OSError as error:
            raise UserError(
                f"Cannot write metrics to model_dir '{self.model_dir}' ({error.strerror or error}); "
                "choose a writable directory or fix its permissions."
            ) from error

    def _write_event(self, split: str, step: int, wall_time: float, summary: Any) -> None:
        if split not in self._event_writers:
            logdir = self.model_dir / TENSORBOARD_DIRNAME / split
            logdir.mkdir(parents=True, exist_ok=True)
            # The nanosecond suffix keeps a reopened run from overwriting a file
            # created in the same second (tensorboardX names files by seconds).
            self._event_writers[split] = event_file_writer.EventsWriter(
                str(logdir / "events"), filename_suffix=f".{time.time_ns()}"
            )
        event = event_pb2.Event(wall_time=wall_time, step=step, summary=summary)
        self._event_writers[split].write_event(event)

    def _write_record(self, record: Mapping[str, Any]) -> None:
        if self._jsonl is None:
            raise ValueError(f"MetricsWriter for '{self.model_dir}' is closed.")
        self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        self._jsonl.flush()

    def write_scalars(self, step: int, scalars: Mapping[str, Any], split: str = "train") -> None:
        """Writes one JSONL line and one TensorBoard scalar per metric for ``step``.

        Values may be Python numbers, NumPy scalars or 0-d NumPy/JAX arrays.
        """
        if not self.enabled:
            return
        for name in scalars:
            _check_not_reserved(name)
        values = {name: _to_float(name, value) for name, value in scalars.items()}
        record = {"step": int(step), "split": split, "time": time.time()}
        record.update({name: _json_number(value) for name, value in values.items()})
        self._write_record(record)
        for name, value in values.items():
            self._write_event(split, int(step), record["time"], tensorboard_summary.scalar(name, value))

    def write_text(self, step: int, tag: str, text: str) -> None:
        """Writes a TensorBoard text summary and a JSONL record with split ``"text"``."""
        if not self.enabled:
            return
        _check_not_reserved(tag)
        record = {"step": int(step), "split": TEXT_SPLIT, "time": time.time(), tag: text}
        self._write_record(record)
        self._write_event(TEXT_SPLIT, int(step), record["time"], tensorboard_summary.text(tag, text))

    def flush(self) -> None:
        """Pushes everything written so far to disk."""
        if self._jsonl is not None:
            self._jsonl.flush()
        for event_writer in self._event_writers.values():
            event_writer.flush()

    def close(self) -> None:
        """Flushes and closes all files; safe to call twice."""
        for event_writer in self._event_writers.values():
            event_writer.close()
        self._event_writers.clear()
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None

    def __enter__(self) -> "MetricsWriter":
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: types.TracebackType | None,
    ) -> None:
        self.close()
