"""Plain, frozen results of sweeps, and their results-JSON form (schema 1).

Everything that shows a sweep (CLI table, markdown snapshot, /metrics, /api/v1/results)
reads these objects; nothing here knows how they were measured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

SCHEMA_VERSION = 1

# Why a level failed / a sweep stopped. A fixed vocabulary: dashboards and alerts use it.
STOP_MEMORY = "memory_limit"
STOP_ERRORS = "error_ratio"
STOP_LATENCY = "latency_p95"
STOP_NO_REQUESTS = "no_requests"


class ResultsError(ValueError):
    """A results document that is not results JSON schema 1."""


@dataclass(frozen=True)
class Plan:
    """The measurement plan a sweep actually used."""

    levels: tuple[int, ...]
    duration_s: float
    interval_s: float
    timeout_s: float
    memory_limit_ratio: float
    max_error_ratio: float = 0.0
    latency_p95_max_s: float | None = None
    stream: bool = True
    max_tokens: int = 128

    def to_json(self) -> dict[str, Any]:
        return {
            "levels": list(self.levels),
            "duration_s": self.duration_s,
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "memory_limit_ratio": self.memory_limit_ratio,
            "max_error_ratio": self.max_error_ratio,
            "latency_p95_max_s": self.latency_p95_max_s,
            "stream": self.stream,
            "max_tokens": self.max_tokens,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> Plan:
        return cls(
            levels=tuple(int(x) for x in doc["levels"]),
            duration_s=float(doc["duration_s"]),
            interval_s=float(doc["interval_s"]),
            timeout_s=float(doc["timeout_s"]),
            memory_limit_ratio=float(doc["memory_limit_ratio"]),
            max_error_ratio=float(doc.get("max_error_ratio", 0.0)),
            latency_p95_max_s=_opt_float(doc.get("latency_p95_max_s")),
            stream=bool(doc.get("stream", True)),
            max_tokens=int(doc.get("max_tokens", 128)),
        )


@dataclass(frozen=True)
class LevelResult:
    """One concurrency level: N closed-loop users for `duration`."""

    concurrency: int
    requests: int
    successes: int
    errors: int
    timeouts: int
    latency_mean_s: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    latency_max_s: float | None
    memory_start_ratio: float
    memory_end_ratio: float
    memory_peak_ratio: float
    passed: bool
    stop_reason: str | None
    errors_by_reason: Mapping[str, int] = field(default_factory=dict)
    ttft_mean_s: float | None = None
    ttft_p95_s: float | None = None
    output_tokens: int = 0
    output_tokens_per_s: float | None = None
    elapsed_s: float = 0.0
    aborted: bool = False
    server_rss_peak_bytes: int | None = None
    # The server's own metrics during the level (llama.cpp, vLLM): peaks.
    server_running_peak: float | None = None
    server_waiting_peak: float | None = None
    server_kv_cache_usage_peak: float | None = None

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "requests": self.requests,
            "successes": self.successes,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "errors_by_reason": dict(sorted(self.errors_by_reason.items())),
            "latency_mean_s": _round(self.latency_mean_s),
            "latency_p50_s": _round(self.latency_p50_s),
            "latency_p95_s": _round(self.latency_p95_s),
            "latency_p99_s": _round(self.latency_p99_s),
            "latency_max_s": _round(self.latency_max_s),
            "ttft_mean_s": _round(self.ttft_mean_s),
            "ttft_p95_s": _round(self.ttft_p95_s),
            "output_tokens": self.output_tokens,
            "output_tokens_per_s": _round(self.output_tokens_per_s),
            "memory_start_ratio": _round(self.memory_start_ratio),
            "memory_end_ratio": _round(self.memory_end_ratio),
            "memory_peak_ratio": _round(self.memory_peak_ratio),
            "server_rss_peak_bytes": self.server_rss_peak_bytes,
            "server_running_peak": self.server_running_peak,
            "server_waiting_peak": self.server_waiting_peak,
            "server_kv_cache_usage_peak": _round(self.server_kv_cache_usage_peak),
            "elapsed_s": _round(self.elapsed_s),
            "aborted": self.aborted,
            "passed": self.passed,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> LevelResult:
        return cls(
            concurrency=int(doc["concurrency"]),
            requests=int(doc["requests"]),
            successes=int(doc["successes"]),
            errors=int(doc["errors"]),
            timeouts=int(doc["timeouts"]),
            latency_mean_s=_opt_float(doc.get("latency_mean_s")),
            latency_p50_s=_opt_float(doc.get("latency_p50_s")),
            latency_p95_s=_opt_float(doc.get("latency_p95_s")),
            latency_p99_s=_opt_float(doc.get("latency_p99_s")),
            latency_max_s=_opt_float(doc.get("latency_max_s")),
            memory_start_ratio=float(doc["memory_start_ratio"]),
            memory_end_ratio=float(doc["memory_end_ratio"]),
            memory_peak_ratio=float(doc.get("memory_peak_ratio", doc["memory_end_ratio"])),
            passed=bool(doc["passed"]),
            stop_reason=doc.get("stop_reason"),
            errors_by_reason={str(k): int(v) for k, v in doc.get("errors_by_reason", {}).items()},
            ttft_mean_s=_opt_float(doc.get("ttft_mean_s")),
            ttft_p95_s=_opt_float(doc.get("ttft_p95_s")),
            output_tokens=int(doc.get("output_tokens", 0)),
            output_tokens_per_s=_opt_float(doc.get("output_tokens_per_s")),
            elapsed_s=float(doc.get("elapsed_s", 0.0)),
            aborted=bool(doc.get("aborted", False)),
            server_rss_peak_bytes=_opt_int(doc.get("server_rss_peak_bytes")),
            server_running_peak=_opt_float(doc.get("server_running_peak")),
            server_waiting_peak=_opt_float(doc.get("server_waiting_peak")),
            server_kv_cache_usage_peak=_opt_float(doc.get("server_kv_cache_usage_peak")),
        )


@dataclass(frozen=True)
class ModelResult:
    """One completed sweep of one model."""

    model: str
    server: str
    started_at: datetime
    finished_at: datetime
    plan: Plan
    levels: tuple[LevelResult, ...]
    cold_start_s: float | None = None
    warmup_error: str | None = None
    # Ollama (/api/ps): whether the model was in memory before the sweep, and its size.
    loaded_before: bool | None = None
    model_size_bytes: int | None = None

    @property
    def first_failed(self) -> LevelResult | None:
        return next((lv for lv in self.levels if not lv.passed), None)

    @property
    def max_safe_concurrency(self) -> int:
        """Highest level that passed with every lower level passing (0 if level 1 failed)."""
        best = 0
        for lv in self.levels:
            if not lv.passed:
                break
            best = lv.concurrency
        return best

    @property
    def limit_reached(self) -> bool:
        """True when a tested level failed: the limit lies within the tested range."""
        return self.first_failed is not None

    @property
    def mean_successes(self) -> float:
        """Average successes over the levels run (the seed's "Tasa promedio de éxito")."""
        if not self.levels:
            return 0.0
        return sum(lv.successes for lv in self.levels) / len(self.levels)

    @property
    def stop_reason(self) -> str | None:
        failed = self.first_failed
        return failed.stop_reason if failed else None

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "server": self.server,
            "started_at": format_timestamp(self.started_at),
            "finished_at": format_timestamp(self.finished_at),
            "plan": self.plan.to_json(),
            "cold_start_s": _round(self.cold_start_s),
            "warmup_error": self.warmup_error,
            "loaded_before": self.loaded_before,
            "model_size_bytes": self.model_size_bytes,
            "levels": [lv.to_json() for lv in self.levels],
            "max_safe_concurrency": self.max_safe_concurrency,
            "limit_reached": self.limit_reached,
            "mean_successes": round(self.mean_successes, 4),
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelResult:
        return cls(
            model=str(doc["model"]),
            server=str(doc.get("server", "")),
            started_at=parse_timestamp(doc["started_at"]),
            finished_at=parse_timestamp(doc["finished_at"]),
            plan=Plan.from_json(doc["plan"]),
            levels=tuple(LevelResult.from_json(lv) for lv in doc["levels"]),
            cold_start_s=_opt_float(doc.get("cold_start_s")),
            warmup_error=doc.get("warmup_error"),
            loaded_before=doc.get("loaded_before"),
            model_size_bytes=_opt_int(doc.get("model_size_bytes")),
        )


def results_to_json(models: Sequence[ModelResult]) -> dict[str, Any]:
    return {"schema": SCHEMA_VERSION, "models": [m.to_json() for m in models]}


def results_from_json(doc: Any) -> list[ModelResult]:
    """Parse a results document; raises ResultsError with a short reason."""
    if not isinstance(doc, Mapping):
        raise ResultsError("results: expected a JSON object")
    if doc.get("schema") != SCHEMA_VERSION:
        raise ResultsError(f"results: unsupported schema {doc.get('schema')!r} (expected 1)")
    models = doc.get("models")
    if not isinstance(models, list):
        raise ResultsError("results: 'models' must be a list")
    try:
        return [ModelResult.from_json(m) for m in models]
    except (KeyError, TypeError, ValueError) as exc:
        raise ResultsError(f"results: malformed model entry ({exc!r})") from exc


def format_timestamp(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _round(x: float | None, digits: int = 6) -> float | None:
    if x is None or math.isnan(x):
        return None
    return round(x, digits)


def _opt_float(x: Any) -> float | None:
    return None if x is None else float(x)


def _opt_int(x: Any) -> int | None:
    return None if x is None else int(x)
