"""`--log_format=json`: one JSON object per log line, for log collectors (Loki, Cloud Logging).

Each line has `time` (ISO 8601, UTC), `level`, `logger` and `message`, plus
`exception` when one is attached, so a collector can index and filter them
without parsing free text.
"""

from __future__ import annotations

import datetime
import json
import logging

LOG_FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def use_json_logs(logger: logging.Logger | None = None) -> None:
    """Makes every handler of `logger` (default: the root logger) write JSON lines."""
    logger = logging.getLogger() if logger is None else logger
    if not logger.handlers:
        logger.addHandler(logging.StreamHandler())
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
