"""A sweep: the levels of one model in order, the stop rules, and the verdict.

A level passes when its memory peak stays at or below the limit, errors + timeouts are
within the allowed ratio, and the optional p95 objective holds. The sweep stops at the
first failing level and never escalates past it. One uncounted warm-up request comes
first, so a lazily loaded model's load time is cold start, not level-1 latency.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
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
from exporter.serversignals import RUNNING, WAITING, ServerSignalSampler, read_signals


class SweepDeferred(Exception):
    """The server is busy with real traffic: the sweep steps aside (nothing is published)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(detail or reason)
        self.reason = reason
        self.detail = detail


# Asked before the warm-up and before each level: a reason to step aside, or None.
BusyCheck = Callable[[], Awaitable[tuple[str, str] | None]]


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


async def server_busy(server: ServerConfig) -> tuple[str, str] | None:
    """Busy when the server's own metrics show requests running or waiting. Called while
    none of ours are in flight, so every one of them belongs to somebody else."""
    if server.metrics_url is None:
        return None
    async with aiohttp.ClientSession() as session:
        signals = await read_signals(session, server.metrics_url)
    if not signals:
        return None
    others = signals.get(RUNNING, 0.0) + signals.get(WAITING, 0.0)
    if others > 0:
        return "server_busy", f"{others:g} requests running or waiting on the server"
    return None


async def ollama_loaded(server: ServerConfig, model: ModelConfig) -> tuple[bool, int | None] | None:
    """(loaded, size in bytes) from Ollama's /api/ps; None when it cannot be asked."""
    from exporter.backends.ollama import loaded_models

    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
            models = await loaded_models(session, server.url)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return None
    wanted = {model.id, model.id.removesuffix(":latest"), f"{model.id}:latest"}
    for entry in models:
        if entry.get("name") in wanted or entry.get("model") in wanted:
            size = entry.get("size")
            return True, size if isinstance(size, int) else None
    return False, None


async def server_processes(server: ServerConfig) -> list[psutil.Process]:
    """The model server's processes, for their RSS: by pid file, or by name."""
    if server.pid_file:
        try:
            pid = int((await asyncio.to_thread(Path(server.pid_file).read_text)).strip())
            return [psutil.Process(pid)]
        except (OSError, ValueError, psutil.Error):
            return []
    if server.process_name:
        return await asyncio.to_thread(find_processes, server.process_name)
    return []


async def run_sweep(
    server: ServerConfig,
    model: ModelConfig,
    observer: SweepObserver | None = None,
    busy: BusyCheck | None = None,
) -> ModelResult:
    """Sweep one model. With `busy`, raises SweepDeferred when the server has other work."""
    observer = observer or SweepObserver()
    settings = model.probe
    backend = backend_for(server, model)

    async def step_aside_if_busy() -> None:
        if busy is not None and settings.yield_to_traffic:
            found = await busy()
            if found is not None:
                raise SweepDeferred(*found)

    await step_aside_if_busy()
    started_at = datetime.now(UTC)
    observer.sweep_started(server, model)
    processes = await server_processes(server)
    loaded = await ollama_loaded(server, model) if server.api == "ollama" else None

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
        await step_aside_if_busy()
        live = LiveLevel(concurrency, settings.duration_s)
        observer.level_started(server, model, live)
        sampler = MemorySampler(settings.memory_sample_interval_s, settings.memory_limit, processes)
        measured = await run_level(
            backend,
            concurrency,
            sampler,
            live=live,
            on_outcome=lambda o: observer.request_done(server, model, o),
            signals=(
                ServerSignalSampler(server.metrics_url, settings.memory_sample_interval_s)
                if server.metrics_url
                else None
            ),
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
        loaded_before=loaded[0] if loaded else None,
        model_size_bytes=loaded[1] if loaded else None,
    )
    observer.sweep_finished(result)
    return result
