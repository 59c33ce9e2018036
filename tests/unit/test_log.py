"""Logs never carry secrets: secret keys masked, registered secret values replaced anywhere."""

from __future__ import annotations

import io
import json

import structlog

from service.log import configure_logging, get_logger, register_secrets


def test_secret_values_and_keys_are_redacted():
    """A password in any string, nested value or exception text is masked in the JSON line."""
    register_secrets(["hunter2-secret-value"])
    out = io.StringIO()
    configure_logging("json", out)
    try:
        raise RuntimeError("connect failed for password hunter2-secret-value")
    except RuntimeError:
        get_logger().exception("db.error", password="plain", nested={"uri": "x://u:hunter2-secret-value@h"},
                               items=["hunter2-secret-value"])
    line = out.getvalue()
    assert "hunter2-secret-value" not in line
    event = json.loads(line)
    assert event["password"] == "***" and event["event"] == "db.error"
    structlog.reset_defaults()


def test_json_when_not_a_terminal():
    """Not on a terminal, every event is one JSON object per line with a level and a time."""
    out = io.StringIO()
    configure_logging("auto", out)
    get_logger(job="x").info("backup.started", tables=3)
    event = json.loads(out.getvalue())
    assert event["job"] == "x" and event["tables"] == 3 and event["level"] == "info" and "timestamp" in event
    structlog.reset_defaults()
