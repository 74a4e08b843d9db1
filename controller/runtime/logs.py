"""Structured JSON logs; every line about a job carries its namespace, name and uid."""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from controller.model.jobs import JobRef

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_PLAIN = (str, int, float, bool, dict, list, type(None))


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            # Only plain values: libraries attach whole objects (kopf its settings) to records.
            if key not in _STANDARD and not key.startswith("_") and isinstance(value, _PLAIN):
                doc[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            # A traceback is for bugs (ERROR); an outage a library warns about (asyncpg's pool
            # while PostgreSQL restarts) needs one line, not a stack, in every log stream.
            if record.levelno >= logging.ERROR:
                doc["exc"] = self.formatException(record.exc_info)
            else:
                doc["error"] = f"{type(error).__name__}: {error}"
        return json.dumps(doc, ensure_ascii=False, default=str)


def configure(level: str, fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if fmt == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # kopf logs every handled event at INFO; at our volumes that drowns the lines users need.
    logging.getLogger("kopf").setLevel(
        logging.DEBUG if level == "DEBUG" else max(logging.getLevelName(level), logging.WARNING)
    )
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def job_fields(ref: JobRef) -> dict[str, object]:
    """`extra=` for a log line about a job (nested: `name` is taken by LogRecord itself)."""
    return {"job": {"namespace": ref.namespace, "name": ref.name, "uid": str(ref.uid)}}
