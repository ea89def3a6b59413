"""`metrics.jsonl` across resumes: marking redone steps superseded, reading the newest per step.

A run that resumes from step N (after a preemption, or from an older
checkpoint because the newer one was damaged) redoes the steps after N, and
appends their records again. Before it does, `mark_superseded` adds
`"superseded": true` to the records already there for steps after N (the
file is rewritten to a temporary name and renamed over, so a crash leaves the
old file or the new one, never half). Nothing is deleted. `read_metrics` is
what reports read: superseded records dropped, and of several records of one
step and split the last one.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

from llmos_jax.monitoring.metrics_writer import METRICS_FILENAME

SUPERSEDED_KEY = "superseded"


def _records(path: pathlib.Path) -> list[tuple[str, dict[str, Any] | None]]:
    """Each line with its record (None for a line that is not a JSON object, kept as is)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = None
        lines.append((line, record if isinstance(record, dict) else None))
    return lines


def mark_superseded(model_dir: str | os.PathLike, *, after_step: int) -> int:
    """Marks the records of steps after `after_step` superseded; returns how many were marked."""
    path = pathlib.Path(model_dir) / METRICS_FILENAME
    if not path.exists():
        return 0
    lines, marked = [], 0
    for line, record in _records(path):
        if (record is not None and isinstance(record.get("step"), int)
                and record["step"] > after_step and not record.get(SUPERSEDED_KEY)):
            record[SUPERSEDED_KEY] = True
            line = json.dumps(record, allow_nan=False)
            marked += 1
        lines.append(line)
    if marked:
        partial = path.with_name(path.name + ".partial")
        partial.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
        os.replace(partial, path)
    return marked


def read_metrics(model_dir: str | os.PathLike, split: str | None = None) -> list[dict[str, Any]]:
    """The records that count, by step: superseded ones dropped, the last of each (step, split).

    Args:
      model_dir: The run folder.
      split: Only this split's records ("train", "eval", "text", ...); None: all.

    Returns:
      Records sorted by step (then split); lines that are not JSON (a line a
      live run is still writing) are skipped.
    """
    path = pathlib.Path(model_dir) / METRICS_FILENAME
    if not path.exists():
        return []
    newest: dict[tuple[int, str], dict[str, Any]] = {}
    for _, record in _records(path):
        if record is None or record.get(SUPERSEDED_KEY) or "step" not in record:
            continue
        if split is None or record.get("split") == split:
            newest[(record["step"], str(record.get("split")))] = record
    return [newest[key] for key in sorted(newest)]
