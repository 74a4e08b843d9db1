import json
import logging

from controller.runtime.logs import JsonFormatter


def record(level: int) -> logging.LogRecord:
    try:
        raise ConnectionRefusedError("connect call failed")
    except ConnectionRefusedError:
        import sys

        return logging.LogRecord("asyncpg.pool", level, __file__, 1, "pool floor", (), sys.exc_info())


def test_warnings_carry_the_error_in_one_line() -> None:
    doc = json.loads(JsonFormatter().format(record(logging.WARNING)))
    assert doc["error"] == "ConnectionRefusedError: connect call failed" and "exc" not in doc


def test_errors_keep_their_traceback() -> None:
    doc = json.loads(JsonFormatter().format(record(logging.ERROR)))
    assert "Traceback" in doc["exc"]


def test_extra_fields_are_kept_when_plain() -> None:
    rec = logging.LogRecord("relayjob", logging.INFO, __file__, 1, "job done", (), None)
    rec.job = {"namespace": "ns", "name": "a", "uid": "u"}
    rec.settings = object()
    doc = json.loads(JsonFormatter().format(rec))
    assert doc["job"]["name"] == "a" and "settings" not in doc
