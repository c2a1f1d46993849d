"""A sweep: the levels of one model in order, the stop rules, and the verdict.

A level passes when its memory peak stays at or below the limit, errors + timeouts are
within the allowed ratio, and the optional p95 objective holds. The sweep stops at the
first failing level and never escalates past it. One uncounted warm-up request comes
first, so a lazily loaded model's load time is cold start, not level-1 latency.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime

import psutil

from exporter.backends import Backend, HttpClient, Outcome, backend_for
from exporter.config import ModelConfig, ProbeSettings, ServerConfig
from exporter.engine import LiveLevel, run_level
from exporter.memory import MemorySampler, find_processes
from exporter.results import (
    STOP_ERRORS,
    STOP_LATENCY,
    STOP_MEMORY,
    STOP_NO_REQUESTS,
    LevelResult,
    ModelResult,
)


class SweepObserver:
    """Hooks a sweep calls as it goes (progress display, metrics). No-ops by default."""

    def sweep_started(self, server: ServerConfig, model: ModelConfig) -> None:
        """Called before the warm-up request."""

    def level_started(self, server: ServerConfig, model: ModelConfig, live: LiveLevel) -> None:
        """Called as the level's users start; `live` is updated while it runs."""

    def request_done(self, server: ServerConfig, model: ModelConfig, outcome: Outcome) -> None:
        """Called for every counted request as it completes."""

    def level_finished(self, server: ServerConfig, model: ModelConfig, level: LevelResult) -> None:
        """Called with each judged level."""

    def sweep_finished(self, result: ModelResult) -> None:
        """Called with the complete result."""


def judge(level: LevelResult, settings: ProbeSettings) -> tuple[bool, str | None]:
    """Whether a level passes, and if not, why (memory first: it is the one that hurts)."""
    if level.aborted or level.memory_peak_ratio > settings.memory_limit:
        return False, STOP_MEMORY
    if level.requests == 0:
        return False, STOP_NO_REQUESTS
    if level.failures / level.requests > settings.max_error_ratio:
        return False, STOP_ERRORS
    objective = settings.latency_p95_max_s
    if objective is not None and (level.latency_p95_s is None or level.latency_p95_s > objective):
        return False, STOP_LATENCY
    return True, None


async def warm_up(backend: Backend) -> Outcome:
    """One uncounted request; its latency (or the server's own load time) is cold start."""
    async with HttpClient(1) as client:
        return await backend.execute(client, backend.settings.timeout_s)


async def run_sweep(
    server: ServerConfig,
    model: ModelConfig,
    observer: SweepObserver | None = None,
) -> ModelResult:
    observer = observer or SweepObserver()
    settings = model.probe
    backend = backend_for(server, model)
    started_at = datetime.now(UTC)
    observer.sweep_started(server, model)
    processes: list[psutil.Process] = []
    if server.process_name:
        processes = await asyncio.to_thread(find_processes, server.process_name)

    cold_start: float | None = None
    warmup_error: str | None = None
    if settings.warmup:
        first = await warm_up(backend)
        if first.ok:
            # Ollama reports its own load time; elsewhere the first answer's time is it.
            cold_start = (
                first.load_duration_s if first.load_duration_s is not None else first.latency_s
            )
        else:
            warmup_error = first.reason or first.kind

    levels: list[LevelResult] = []
    for concurrency in settings.levels:
        live = LiveLevel(concurrency, settings.duration_s)
        observer.level_started(server, model, live)
        sampler = MemorySampler(settings.memory_sample_interval_s, settings.memory_limit, processes)
        measured = await run_level(
            backend,
            concurrency,
            sampler,
            live=live,
            on_outcome=lambda o: observer.request_done(server, model, o),
        )
        passed, reason = judge(measured, settings)
        level = replace(measured, passed=passed, stop_reason=reason)
        levels.append(level)
        observer.level_finished(server, model, level)
        if not passed:
            break

    result = ModelResult(
        model=model.name,
        server=server.name,
        started_at=started_at,
        finished_at=datetime.now(UTC),
        plan=settings.plan(),
        levels=tuple(levels),
        cold_start_s=cold_start,
        warmup_error=warmup_error,
    )
    observer.sweep_finished(result)
    return result
