"""Live progress of a sweep on stderr: model, level, elapsed/total, counts, host RAM.

On a terminal it is one line redrawn four times a second (rich); elsewhere (CI logs,
pipes) it prints a plain line every few seconds and one per completed level.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.text import Text

from exporter.config import ModelConfig, ServerConfig
from exporter.engine import LiveLevel
from exporter.memory import host_memory_used_ratio
from exporter.results import LevelResult, ModelResult
from exporter.sweep import SweepObserver


class ProgressDisplay(SweepObserver):
    def __init__(self, stream: TextIO | None = None, plain_every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.console = Console(file=self.stream, stderr=True, highlight=False)
        self.interactive = self.console.is_terminal
        self.plain_every_s = plain_every_s
        self.model: ModelConfig | None = None
        self.live_level: LiveLevel | None = None
        self.level_index = 0
        self._live: Live | None = None
        self._ticker: asyncio.Task[None] | None = None

    # -- observer hooks ----------------------------------------------------------------

    def sweep_started(self, server: ServerConfig, model: ModelConfig) -> None:
        self.model = model
        self.level_index = 0
        self._line(f"{model.name}: warm-up request to {server.name} ...")

    def level_started(self, server: ServerConfig, model: ModelConfig, live: LiveLevel) -> None:
        self.live_level = live
        self.level_index += 1
        self._start()

    def level_finished(self, server: ServerConfig, model: ModelConfig, level: LevelResult) -> None:
        self._stop()
        mean = "-" if level.latency_mean_s is None else f"{level.latency_mean_s:.2f}s"
        verdict = "passed" if level.passed else f"FAILED ({level.stop_reason})"
        self._line(
            f"{model.name}: {level.concurrency} users: {level.requests} requests, "
            f"{level.successes} ok, {level.errors} errors, {level.timeouts} timeouts, "
            f"mean {mean}, RAM peak {level.memory_peak_ratio:.1%}: {verdict}"
        )

    def sweep_finished(self, result: ModelResult) -> None:
        self._stop()
        limit = "" if result.limit_reached else " (no limit reached)"
        self._line(f"{result.model}: max safe concurrency {result.max_safe_concurrency}{limit}")

    # -- drawing -----------------------------------------------------------------------

    def status(self) -> str:
        lv, model = self.live_level, self.model
        if lv is None or model is None:
            return ""
        total = len(model.probe.levels)
        return (
            f"{model.name}  level {self.level_index}/{total} ({lv.concurrency} users)  "
            f"{min(lv.elapsed_s, 9999):5.1f}s/{lv.duration_s:g}s  requests {lv.requests}  "
            f"ok {lv.successes}  errors {lv.errors}  timeouts {lv.timeouts}  "
            f"in flight {lv.in_flight}  RAM {host_memory_used_ratio():.1%}"
        )

    def _start(self) -> None:
        if self.interactive:
            self._live = Live(
                get_renderable=lambda: Text(self.status()),
                console=self.console,
                refresh_per_second=4,
                transient=True,
            )
            self._live.start()
        else:
            with contextlib.suppress(RuntimeError):
                self._ticker = asyncio.get_running_loop().create_task(self._tick())

    def _stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        if self._ticker is not None:
            self._ticker.cancel()
            self._ticker = None

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.plain_every_s)
            self._line(self.status())

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)
