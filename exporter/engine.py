"""One concurrency level: N closed-loop users against one model, measured.

Exactly the seed's method (DESIGN.md "The measurement"): N users start at t0; each sends
a request, waits for its outcome, sleeps `interval`, and sends again only while
`now - t0 < duration`; requests in flight at the end are awaited (up to their timeout).
The memory guard aborts the level at once, cancelling what is in flight.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from exporter.backends.base import CANCELLED, ERROR, SUCCESS, TIMEOUT, Backend, HttpClient, Outcome
from exporter.memory import MemorySampler, MemoryWindow
from exporter.results import LevelResult
from exporter.serversignals import ServerSignalSampler, SignalPeaks

OutcomeHook = Callable[[Outcome], None]


@dataclass
class LiveLevel:
    """Counters of a running level, read by progress displays (never written by them)."""

    concurrency: int
    duration_s: float
    started: float = field(default_factory=time.perf_counter)
    requests: int = 0
    successes: int = 0
    errors: int = 0
    timeouts: int = 0
    in_flight: int = 0
    memory_ratio: float = 0.0

    @property
    def elapsed_s(self) -> float:
        return time.perf_counter() - self.started


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (numpy's default) of already sorted values."""
    if not sorted_values:
        return None
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def run_level(
    backend: Backend,
    concurrency: int,
    sampler: MemorySampler,
    *,
    on_outcome: OutcomeHook | None = None,
    live: LiveLevel | None = None,
    signals: ServerSignalSampler | None = None,
) -> LevelResult:
    """Run one level and return its measurements (`passed` is judged by the sweep)."""
    settings = backend.settings
    duration, interval, timeout = settings.duration_s, settings.interval_s, settings.timeout_s
    live = live or LiveLevel(concurrency, duration)
    outcomes: list[Outcome] = []

    def record(outcome: Outcome) -> None:
        outcomes.append(outcome)
        live.requests += 1
        if outcome.kind == SUCCESS:
            live.successes += 1
        elif outcome.kind == TIMEOUT:
            live.timeouts += 1
        else:
            live.errors += 1
        if on_outcome is not None:
            on_outcome(outcome)

    client = HttpClient(concurrency)
    try:
        if not (settings.stream and backend.closes_after_stream):
            await backend.open_connections(client, concurrency)
        sampler.begin()
        if signals is not None:
            signals.begin()
        t0 = time.perf_counter()
        live.started = t0

        async def user() -> None:
            while True:
                live.in_flight += 1
                sent = time.perf_counter()
                try:
                    outcome = await backend.execute(client, timeout)
                except asyncio.CancelledError:
                    # The memory guard (or shutdown) cut this request off: it counts.
                    record(Outcome(ERROR, time.perf_counter() - sent, reason=CANCELLED))
                    raise
                finally:
                    live.in_flight -= 1
                record(outcome)
                if time.perf_counter() - t0 >= duration:
                    return
                await asyncio.sleep(interval)
                if time.perf_counter() - t0 >= duration:
                    return

        users = [asyncio.create_task(user()) for _ in range(concurrency)]
        everyone: asyncio.Future[list[BaseException | None]] = asyncio.ensure_future(
            asyncio.gather(*users, return_exceptions=True)
        )
        guard: asyncio.Future[Any] = asyncio.ensure_future(sampler.exceeded.wait())
        try:
            await asyncio.wait([everyone, guard], return_when=asyncio.FIRST_COMPLETED)
        finally:
            guard.cancel()
            aborted = not everyone.done()
            for task in users:
                task.cancel()
            # Shielded: a shutdown cancelling us must still let the users record and close.
            ends = await asyncio.shield(everyone)
        for end in ends:
            if isinstance(end, Exception):
                raise end
        elapsed = time.perf_counter() - t0
        window = await sampler.finish()
        peaks = await signals.finish() if signals is not None else SignalPeaks()
    finally:
        await client.close()
    live.memory_ratio = window.end
    return summarise(concurrency, outcomes, elapsed, window, peaks, aborted)


def summarise(
    concurrency: int,
    outcomes: Sequence[Outcome],
    elapsed_s: float,
    window: MemoryWindow,
    peaks: SignalPeaks,
    aborted: bool,
) -> LevelResult:
    ok = [o for o in outcomes if o.kind == SUCCESS]
    latencies = sorted(o.latency_s for o in ok)
    ttfts = sorted(o.ttft_s for o in ok if o.ttft_s is not None)
    tokens = sum(o.output_tokens or 0 for o in ok)
    reasons = Counter(o.reason or "unknown" for o in outcomes if o.kind == ERROR)
    return LevelResult(
        concurrency=concurrency,
        requests=len(outcomes),
        successes=len(ok),
        errors=sum(reasons.values()),
        timeouts=sum(1 for o in outcomes if o.kind == TIMEOUT),
        latency_mean_s=sum(latencies) / len(latencies) if latencies else None,
        latency_p50_s=percentile(latencies, 50),
        latency_p95_s=percentile(latencies, 95),
        latency_p99_s=percentile(latencies, 99),
        latency_max_s=latencies[-1] if latencies else None,
        memory_start_ratio=window.start,
        memory_end_ratio=window.end,
        memory_peak_ratio=window.peak,
        passed=True,
        stop_reason=None,
        errors_by_reason=dict(reasons),
        ttft_mean_s=sum(ttfts) / len(ttfts) if ttfts else None,
        ttft_p95_s=percentile(ttfts, 95),
        output_tokens=tokens,
        output_tokens_per_s=tokens / elapsed_s if tokens and elapsed_s > 0 else None,
        elapsed_s=elapsed_s,
        aborted=aborted,
        server_rss_peak_bytes=window.server_rss_peak,
        server_running_peak=peaks.running,
        server_waiting_peak=peaks.waiting,
        server_kv_cache_usage_peak=peaks.kv_cache_usage,
    )
