"""The long-running exporter: one event loop holding the web app and an APScheduler 3.x
AsyncIOScheduler, with a sweep job and a heartbeat job per model and the snapshot job.

Sweeps run one at a time per exporter (they share the host's RAM and CPU): each sweep
job waits for `sweep_lock`, and `max_instances=1` keeps a model's own triggers from
piling up behind it. Results are published only for completed sweeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from exporter.backends import HttpClient, Outcome, backend_for
from exporter.config import (
    Config,
    ConfigError,
    ModelConfig,
    ServerConfig,
    load_config,
    parse_listen_address,
)
from exporter.durations import parse_duration
from exporter.logs import fields, log
from exporter.metrics import ExporterMetrics
from exporter.results import LevelResult, ModelResult
from exporter.snapshot import render_snapshot, write_snapshot_async
from exporter.state import Key, ResultsStore
from exporter.sweep import SweepDeferred, SweepObserver, run_sweep, server_busy
from exporter.webconfig import WebConfig

HEARTBEAT_MAX_TOKENS = 1
HEARTBEAT_TIMEOUT_S = 10.0
STOP_GRACE_S = 3.0


def sweep_trigger(schedule: str, jitter_s: float) -> IntervalTrigger | CronTrigger:
    jitter = int(jitter_s) or None
    try:
        return IntervalTrigger(seconds=parse_duration(schedule), jitter=jitter, timezone=UTC)
    except ValueError:
        return CronTrigger.from_crontab(schedule, timezone=UTC)


@dataclass(frozen=True)
class Target:
    server: ServerConfig
    model: ModelConfig

    @property
    def key(self) -> Key:
        return (self.server.name, self.model.name)


class _SweepEvents(SweepObserver):
    """Feeds a running sweep into the live metrics and the log."""

    def __init__(self, exporter: Exporter) -> None:
        self.exporter = exporter

    def request_done(self, server: ServerConfig, model: ModelConfig, outcome: Outcome) -> None:
        metrics = self.exporter.metrics
        metrics.record_request(server.name, model.name, outcome)
        if outcome.ok:
            metrics.up.labels(model.name, server.name).set(1)

    def level_finished(self, server: ServerConfig, model: ModelConfig, level: LevelResult) -> None:
        log.info(
            "level done",
            extra=fields(
                server=server.name,
                model=model.name,
                users=level.concurrency,
                requests=level.requests,
                successes=level.successes,
                errors=level.errors,
                timeouts=level.timeouts,
                latency_mean_s=_round(level.latency_mean_s),
                latency_p95_s=_round(level.latency_p95_s),
                memory_peak_ratio=round(level.memory_peak_ratio, 4),
                passed=level.passed,
                stop_reason=level.stop_reason,
            ),
        )


class Exporter:
    """Config, results, metrics, scheduler and web app of one running exporter."""

    def __init__(
        self,
        config: Config,
        *,
        config_path: str | None = None,
        listen_address: str | None = None,
        web_config: WebConfig | None = None,
    ) -> None:
        self.config = config
        self.config_path = config_path
        self.listen_address = listen_address or config.web.listen_address
        self.web_config = web_config
        self.store = ResultsStore(config.state_dir)
        self.metrics = ExporterMetrics(self.current_results)
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        self.sweep_lock = asyncio.Lock()
        self.sweeping: set[str] = set()  # servers being swept: their heartbeats pause
        self.current_sweep: asyncio.Task[ModelResult] | None = None
        self.snapshot_text = ""
        self.stopping = asyncio.Event()
        self.started_at = time.time()
        self._heartbeats: HttpClient | None = None
        self._up: dict[Key, bool] = {}
        self._idle_heartbeats: dict[Key, deque[float]] = {}
        self._deferrals: dict[Key, int] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    # -- views ---------------------------------------------------------------------------

    def targets(self) -> list[Target]:
        return [Target(s, m) for s, m in self.config.targets()]

    def target(self, key: Key) -> Target | None:
        return next((t for t in self.targets() if t.key == key), None)

    def current_results(self) -> list[ModelResult]:
        return self.store.ordered(t.key for t in self.targets())

    @property
    def ready(self) -> bool:
        return self.scheduler.running and not self.stopping.is_set()

    def notes(self) -> list[str]:
        return [n for s in self.config.servers for n in s.notes]

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        from exporter.web import build_app

        restored = await asyncio.to_thread(self.store.load)
        if restored:
            log.info("results restored", extra=fields(path=str(self.store.path), models=restored))
        self._apply_targets()
        self.metrics.record_reload(True)
        self._heartbeats = HttpClient(64)
        host, port = parse_listen_address(self.listen_address)
        self._runner = web.AppRunner(build_app(self), handle_signals=False, access_log=None)
        await self._runner.setup()
        ssl_context = self.web_config.ssl_context if self.web_config else None
        site = web.TCPSite(self._runner, host, port, ssl_context=ssl_context)
        await site.start()
        # The bound port (the address may ask for port 0: any free one).
        self.port = int(self._runner.addresses[0][1])
        self._schedule_jobs(first_start=True)
        self.scheduler.start()
        await self.write_snapshot()
        scheme = "https" if ssl_context else "http"
        log.info(
            "exporter started",
            extra=fields(
                listen=f"{scheme}://{host}:{self.port}",
                models=len(self.targets()),
                snapshot=self.config.snapshot.path,
            ),
        )

    async def stop(self) -> None:
        """Stop scheduling, cut a running sweep short (never published), close everything."""
        self.stopping.set()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        sweep = self.current_sweep
        if sweep is not None and not sweep.done():
            sweep.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError, Exception):
                await asyncio.wait_for(asyncio.shield(sweep), STOP_GRACE_S)
        if self._heartbeats is not None:
            await self._heartbeats.close()
        if self._runner is not None:
            await self._runner.cleanup()
        log.info("exporter stopped")

    # -- jobs ----------------------------------------------------------------------------

    def _apply_targets(self) -> None:
        keys = [t.key for t in self.targets()]
        self.store.retain(keys)
        self.metrics.set_targets(keys, self.config.probe.memory_limit)

    def _schedule_jobs(self, first_start: bool = False) -> None:
        sched = self.config.schedule
        wanted: set[str] = set()
        now = datetime.now(UTC)
        for t in self.targets():
            sweep_id = f"sweep:{t.server.name}/{t.model.name}"
            beat_id = f"heartbeat:{t.server.name}/{t.model.name}"
            wanted |= {sweep_id, beat_id}
            existing = self.scheduler.get_job(sweep_id)
            if existing is not None:
                # Keep the model's place in the schedule across a reload.
                start_at = existing.next_run_time
            elif sched.run_on_start:
                start_at = now
            else:
                start_at = None
            options: dict[str, Any] = {
                "max_instances": 1,
                "coalesce": True,
                "misfire_grace_time": 300,
                "replace_existing": True,
            }
            if start_at is not None:
                options["next_run_time"] = start_at
            self.scheduler.add_job(
                self.sweep_job,
                sweep_trigger(sched.sweep, sched.jitter_s),
                args=[t.key],
                id=sweep_id,
                name=sweep_id,
                **options,
            )
            self.scheduler.add_job(
                self.heartbeat_job,
                IntervalTrigger(seconds=sched.heartbeat_s, timezone=UTC),
                args=[t.key],
                id=beat_id,
                name=beat_id,
                max_instances=1,
                coalesce=True,
                misfire_grace_time=max(1, int(sched.heartbeat_s)),
                replace_existing=True,
                next_run_time=now,
            )
        self.scheduler.add_job(
            self.write_snapshot,
            IntervalTrigger(seconds=self.config.snapshot.every_s, timezone=UTC),
            id="snapshot",
            name="snapshot",
            max_instances=1,
            coalesce=True,
            replace_existing=True,
        )
        wanted.add("snapshot")
        for job in self.scheduler.get_jobs():
            if job.id not in wanted:
                job.remove()

    async def sweep_job(self, key: Key) -> None:
        async with self.sweep_lock:
            target = self.target(key)  # the config may have changed while we queued
            if target is None or self.stopping.is_set():
                return
            await self._sweep(target)

    async def _sweep(self, target: Target) -> None:
        server, model = target.server, target.model
        labels = (model.name, server.name)
        self.sweeping.add(server.name)
        self.metrics.sweep_running.labels(*labels).set(1)
        log.info("sweep started", extra=fields(server=server.name, model=model.name))
        started = time.perf_counter()
        task = asyncio.ensure_future(
            run_sweep(server, model, _SweepEvents(self), busy=self._busy_check(target))
        )
        self.current_sweep = task
        try:
            result = await task
        except SweepDeferred as exc:
            self._defer(target, exc)
            return
        except asyncio.CancelledError:
            self.metrics.sweeps.labels(*labels, "aborted").inc()
            log.warning(
                "sweep aborted, results not published",
                extra=fields(server=server.name, model=model.name),
            )
            return
        except Exception as exc:
            self.metrics.sweeps.labels(*labels, "failed").inc()
            log.exception(
                "sweep failed", extra=fields(server=server.name, model=model.name, error=str(exc))
            )
            return
        finally:
            self.current_sweep = None
            self.sweeping.discard(server.name)
            self.metrics.sweep_running.labels(*labels).set(0)
        if self.target(target.key) is None:
            return  # removed by a reload while it ran
        self._deferrals.pop(target.key, None)
        await self.store.publish(result)
        self.metrics.sweeps.labels(*labels, "completed").inc()
        log.info(
            "sweep done",
            extra=fields(
                server=server.name,
                model=model.name,
                max_safe_concurrency=result.max_safe_concurrency,
                limit_reached=result.limit_reached,
                stop_reason=result.stop_reason,
                duration_s=round(time.perf_counter() - started, 1),
            ),
        )
        await self.write_snapshot()

    def _defer(self, target: Target, exc: SweepDeferred) -> None:
        """Step aside for real traffic: retry later, at most `defer_retries` times."""
        server, model = target.server, target.model
        self.metrics.deferred.labels(model.name, server.name, exc.reason).inc()
        attempt = self._deferrals.get(target.key, 0) + 1
        sched = self.config.schedule
        if attempt > sched.defer_retries:
            self._deferrals.pop(target.key, None)
            log.warning(
                "sweep skipped: the server stayed busy",
                extra=fields(server=server.name, model=model.name, reason=exc.reason,
                             deferrals=attempt - 1),
            )  # fmt: skip
            return
        self._deferrals[target.key] = attempt
        retry_at = datetime.now(UTC) + timedelta(seconds=sched.defer_delay_s)
        self.scheduler.add_job(
            self.sweep_job,
            "date",
            run_date=retry_at,
            args=[target.key],
            id=f"retry:{server.name}/{model.name}",
            replace_existing=True,
            misfire_grace_time=300,
        )
        log.info(
            "sweep deferred: the server is busy with other traffic",
            extra=fields(
                server=server.name,
                model=model.name,
                reason=exc.reason,
                detail=exc.detail,
                attempt=attempt,
                retry_in_s=sched.defer_delay_s,
            ),
        )

    def _busy_check(self, target: Target) -> Callable[[], Awaitable[tuple[str, str] | None]]:
        async def check() -> tuple[str, str] | None:
            if target.server.metrics_url is not None:
                return await server_busy(target.server)
            # No server metrics: a heartbeat now, against the idle heartbeats' baseline.
            baseline = _baseline(self._idle_heartbeats.get(target.key, ()))
            if baseline is None or self._heartbeats is None:
                return None
            backend = backend_for(target.server, target.model)
            outcome = await backend.execute(
                self._heartbeats,
                min(target.model.probe.timeout_s, HEARTBEAT_TIMEOUT_S),
                max_tokens=HEARTBEAT_MAX_TOKENS,
                stream=False,
            )
            factor = target.model.probe.busy_latency_factor
            if outcome.ok and outcome.latency_s > factor * baseline:
                return (
                    "slow_heartbeat",
                    f"heartbeat {outcome.latency_s:.3f}s > {factor:g} x baseline {baseline:.3f}s",
                )
            return None

        return check

    async def heartbeat_job(self, key: Key) -> None:
        target = self.target(key)
        if target is None or target.server.name in self.sweeping or self._heartbeats is None:
            return
        backend = backend_for(target.server, target.model)
        timeout = min(target.model.probe.timeout_s, HEARTBEAT_TIMEOUT_S)
        outcome = await backend.execute(
            self._heartbeats, timeout, max_tokens=HEARTBEAT_MAX_TOKENS, stream=False
        )
        if target.server.name in self.sweeping:
            return  # a sweep started meanwhile: its load says nothing about "up"
        if outcome.ok:
            # Only idle-looking heartbeats make the baseline, or sustained traffic would
            # slowly teach it that "busy" is normal.
            history = self._idle_heartbeats.setdefault(key, deque(maxlen=20))
            baseline = _baseline(history)
            factor = target.model.probe.busy_latency_factor
            if baseline is None or outcome.latency_s <= factor * baseline:
                history.append(outcome.latency_s)
        was_up = self._up.get(key, False)
        self._up[key] = outcome.ok
        self.metrics.record_heartbeat(target.server.name, target.model.name, outcome)
        if outcome.ok and not was_up:
            log.info("model up", extra=fields(server=key[0], model=key[1]))
        elif not outcome.ok and was_up:
            log.warning(
                "model down",
                extra=fields(
                    server=key[0],
                    model=key[1],
                    reason=outcome.reason or outcome.kind,
                    detail=outcome.detail,
                ),
            )

    async def write_snapshot(self) -> None:
        text = render_snapshot(self.current_results(), self.config.snapshot, self.notes())
        self.snapshot_text = text
        try:
            path = await write_snapshot_async(text, self.config.snapshot)
        except OSError as exc:
            log.error(
                "snapshot not written",
                extra=fields(path=self.config.snapshot.path, error=str(exc)),
            )
            return
        log.debug("snapshot written", extra=fields(path=str(path)))

    # -- reload --------------------------------------------------------------------------

    async def reload(self) -> tuple[bool, str]:
        """Re-read the config; apply it only if valid. Returns (ok, message)."""
        if self.config_path is None:
            return False, "no config file to reload"
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            self.metrics.record_reload(False)
            log.error("config reload failed, keeping the running config", extra=fields(
                error=str(exc)))  # fmt: skip
            return False, str(exc)
        restart_only = [
            name
            for name, old, now in (
                ("web.listen_address", self.config.web.listen_address, new.web.listen_address),
                ("state_dir", self.config.state_dir, new.state_dir),
            )
            if old != now
        ]
        self.config = new
        self._apply_targets()
        self._schedule_jobs()
        self.metrics.record_reload(True)
        log.info(
            "config reloaded",
            extra=fields(path=self.config_path, models=len(self.targets())),
        )
        if restart_only:
            log.warning("changes need a restart", extra=fields(keys=",".join(restart_only)))
        return True, "config reloaded"


def _baseline(latencies: Iterable[float]) -> float | None:
    """The idle heartbeat latency: the lower quartile of the recent ones (3 at least)."""
    values = sorted(latencies)
    if len(values) < 3:
        return None
    return statistics.quantiles(values, n=4)[0] if len(values) > 3 else values[0]


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


async def serve_forever(exporter: Exporter, *, reload_on_sighup: bool = True) -> None:
    """Start, run until SIGTERM/SIGINT, stop. SIGHUP reloads the config."""
    import signal

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if reload_on_sighup:
        loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(exporter.reload()))
    await exporter.start()
    try:
        await stop.wait()
    finally:
        await exporter.stop()
