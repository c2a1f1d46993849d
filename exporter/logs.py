"""Logging: one line per event, logfmt (key=value) by default or JSON (`--log.format json`).

Call sites pass fields with `log.info("level done", extra=fields(model=..., users=...))`.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

LOGGER_NAME = "llm_probe_exporter"
log = logging.getLogger(LOGGER_NAME)
_FIELDS = "fields"


def fields(**kv: Any) -> dict[str, Any]:
    return {_FIELDS: kv}


def _timestamp(record: logging.LogRecord) -> str:
    ms = int(record.msecs)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{ms:03d}Z"


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text)
    return text


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        parts = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            **getattr(record, _FIELDS, {}),
        }
        if record.exc_info:
            parts["error"] = self.formatException(record.exc_info).replace("\n", " | ")
        return " ".join(f"{k}={_logfmt_value(v)}" for k, v in parts.items())


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _timestamp(record),
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
            **getattr(record, _FIELDS, {}),
        }
        if record.exc_info:
            doc["error"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup_logging(level: str = "info", fmt: str = "logfmt") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log.setLevel(level.upper())
    # APScheduler's own chatter (job added, executed ...) is debug noise for users.
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level == "debug" else logging.WARNING
    )
