"""What the model server says about itself during a level: its own Prometheus metrics.

llama.cpp's `llama-server --metrics` and vLLM expose how many requests they are running
and how many wait in their queue. Their peaks per level show *why* latency grew: queueing
in the server versus slower service. Read over HTTP, asynchronously, beside the memory
sampler; a server without metrics (or one that stops answering them) just gives none.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

# Server metric names -> the signal they carry. Several names per signal: servers and
# versions differ (vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc).
RUNNING = "running"
WAITING = "waiting"
KV_CACHE = "kv_cache_usage"
SIGNALS: dict[str, str] = {
    "llamacpp:requests_processing": RUNNING,
    "llamacpp:requests_deferred": WAITING,
    "vllm:num_requests_running": RUNNING,
    "vllm:num_requests_waiting": WAITING,
    "vllm:kv_cache_usage_perc": KV_CACHE,
    "vllm:gpu_cache_usage_perc": KV_CACHE,
    "tgi_queue_size": WAITING,
    "tgi_batch_current_size": RUNNING,
}
READ_TIMEOUT_S = 2.0


def parse_signals(text: str) -> dict[str, float]:
    """The signals found in a metrics page, summed over label sets (e.g. vLLM's model_name)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            # The parser strips `_total` and friends from names; match both forms.
            signal = SIGNALS.get(sample.name) or SIGNALS.get(family.name)
            if signal is not None:
                found[signal] = found.get(signal, 0.0) + float(sample.value)
    return found


async def read_signals(session: aiohttp.ClientSession, url: str) -> dict[str, float] | None:
    """One read of the server's metrics; None when they cannot be had right now."""
    try:
        async with asyncio.timeout(READ_TIMEOUT_S), session.get(url) as response:
            if response.status != 200:
                return None
            text = await response.text()
    except (aiohttp.ClientError, TimeoutError, UnicodeDecodeError):
        return None
    try:
        return parse_signals(text)
    except ValueError:
        return None


@dataclass
class SignalPeaks:
    running: float | None = None
    waiting: float | None = None
    kv_cache_usage: float | None = None
    reads: int = 0

    def add(self, signals: dict[str, float]) -> None:
        self.reads += 1
        for name, value in signals.items():
            current = getattr(self, name)
            setattr(self, name, value if current is None else max(current, value))


@dataclass
class ServerSignalSampler:
    """Reads the server's metrics every `interval_s` while a level runs; keeps the peaks."""

    url: str
    interval_s: float = 0.25
    peaks: SignalPeaks = field(default_factory=SignalPeaks)
    _session: aiohttp.ClientSession | None = None
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        assert self._session is not None
        while True:
            signals = await read_signals(self._session, self.url)
            if signals is not None:
                self.peaks.add(signals)
            await asyncio.sleep(self.interval_s)

    def begin(self) -> None:
        self.peaks = SignalPeaks()
        self._session = aiohttp.ClientSession()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def finish(self) -> SignalPeaks:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            # One last read, so a short level still has its end state.
            signals = await read_signals(self._session, self.url)
            if signals is not None:
                self.peaks.add(signals)
            await self._session.close()
            self._session = None
        return self.peaks
