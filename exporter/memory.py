"""Host memory: the used ratio DESIGN.md defines, and a sampler that guards a level.

used ratio = (total - available) / total, as psutil reports it. Reading it is a read of
/proc/meminfo (microseconds), so sampling runs on the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass

import psutil


def host_memory_used_ratio() -> float:
    vm = psutil.virtual_memory()
    return (vm.total - vm.available) / vm.total


def find_processes(name: str) -> list[psutil.Process]:
    """Processes whose name or executable basename is `name` (e.g. "llama-server")."""
    found: list[psutil.Process] = []
    for proc in psutil.process_iter(["name", "exe", "cmdline"]):
        info = proc.info
        exe = (info.get("exe") or "").rsplit("/", 1)[-1]
        cmd = info.get("cmdline") or []
        first = cmd[0].rsplit("/", 1)[-1] if cmd else ""
        if name in (info.get("name"), exe, first):
            found.append(proc)
    return found


def rss_bytes(processes: list[psutil.Process]) -> int | None:
    total = 0
    alive = False
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
            alive = True
    return total if alive else None


@dataclass
class MemoryWindow:
    """Samples taken over one level."""

    start: float
    end: float
    peak: float
    server_rss_peak: int | None = None


class MemorySampler:
    """Samples host memory every `interval_s` while running; trips when over `limit`.

    The engine waits on `exceeded` next to its users, so a level is aborted within one
    sample interval of memory crossing the limit.
    """

    def __init__(
        self,
        interval_s: float,
        limit: float,
        processes: list[psutil.Process] | None = None,
    ) -> None:
        self.interval_s = interval_s
        self.limit = limit
        self.processes = processes or []
        self.exceeded = asyncio.Event()
        self.current = host_memory_used_ratio()
        self.start = self.current
        self.peak = self.current
        self.server_rss_peak: int | None = None
        self._task: asyncio.Task[None] | None = None

    def sample(self) -> float:
        ratio = host_memory_used_ratio()
        self.current = ratio
        self.peak = max(self.peak, ratio)
        if self.processes:
            rss = rss_bytes(self.processes)
            if rss is not None:
                self.server_rss_peak = max(self.server_rss_peak or 0, rss)
        if ratio > self.limit:
            self.exceeded.set()
        return ratio

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            self.sample()

    def begin(self) -> None:
        self.start = self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def finish(self) -> MemoryWindow:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        end = self.sample()
        return MemoryWindow(self.start, end, self.peak, self.server_rss_peak)
