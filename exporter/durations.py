"""Durations as users write them: "25s", "1.5s", "250ms", "10m", "1h", or plain seconds."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
DURATION_HINT = "use 25s, 1.5m, ..."


def parse_duration(value: object) -> float:
    """Seconds from a duration; raises ValueError with a user-facing message."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"{value!r} is negative")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    raise ValueError(f"{value!r} is not a duration ({DURATION_HINT})")


def format_seconds(seconds: float) -> str:
    """Shortest plain form of a number of seconds: 25, 2.5, 0.3."""
    text = f"{seconds:.3f}".rstrip("0").rstrip(".")
    return text or "0"
