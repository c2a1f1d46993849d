"""Shared fixtures: real simulators on 127.0.0.1, in-process or as a separate process."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.simulator import Simulator, profile_from_dict

REPO = Path(__file__).resolve().parents[1]

SimFactory = Callable[..., Awaitable[Simulator]]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[Any]) -> None:
    """SIGTERM a child process if it still runs; SIGKILL it if it has not gone in 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def simulator() -> AsyncIterator[SimFactory]:
    """Start in-process simulators from a profile dict; all are stopped at the end."""
    started: list[Simulator] = []

    async def start(profile: dict[str, Any], time_scale: float = 1.0) -> Simulator:
        sim = Simulator(profile_from_dict(profile), time_scale=time_scale)
        await sim.start("127.0.0.1", 0)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.stop()


class SimProcess:
    """`llm-probe-exporter simulate` as a real child process."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = args
        self.proc: subprocess.Popen[str] | None = None

    def start(self) -> SimProcess:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "simulate", "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "simulator listening on" in line, line
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


def wait_for_port(port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """Start simulator processes: sim_process(profile="seed" | dict, time_scale=0.1)."""
    procs: list[SimProcess] = []

    def start(profile: str | dict[str, Any] = "seed", time_scale: float = 1.0) -> SimProcess:
        if isinstance(profile, dict):
            path = tmp_path / f"profile{len(procs)}.yaml"
            path.write_text(yaml.safe_dump(profile))
            args = ["--config", str(path)]
        else:
            args = ["--profile", profile]
        proc = SimProcess([*args, "--time-scale", str(time_scale)]).start()
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


class ServeProcess:
    """`llm-probe-exporter serve` as a real child process, logs collected as JSON lines."""

    def __init__(self, config: Path, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.config = config
        self.extra = list(extra)
        self.proc: subprocess.Popen[str] | None = None
        self.logs: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self._reader: Any = None
        self.scheme = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, wait: bool = True) -> ServeProcess:
        import json
        import threading

        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "exporter", "serve",
                "--config.file", str(self.config),
                "--web.listen-address", f"127.0.0.1:{self.port}",
                "--log.format", "json", *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip

        def read() -> None:
            assert self.proc is not None and self.proc.stderr is not None
            for line in self.proc.stderr:
                self.raw.append(line)
                with contextlib.suppress(ValueError):
                    self.logs.append(json.loads(line))

        self._reader = threading.Thread(target=read, daemon=True)
        self._reader.start()
        if wait:
            wait_for_port(self.port)
        return self

    def messages(self) -> list[str]:
        return [entry.get("msg", "") for entry in self.logs]

    def logged(self, message: str, count: int = 1, timeout_s: float = 15) -> bool:
        """Wait (bounded) until `message` has been logged at least `count` times.

        The log is read by a thread, a moment after the state the test polls for changed:
        asserting on `messages()` straight after `until(...)` races with that thread.
        """
        seen = until(
            lambda: self.messages().count(message) >= count, timeout_s=timeout_s, every_s=0.05
        )
        return bool(seen)

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30) -> int:
        assert self.proc is not None
        code = self.proc.wait(timeout=timeout)
        if self._reader is not None:
            self._reader.join(timeout=5)
        return code

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    procs: list[ServeProcess] = []

    def start(
        config: Path, *extra: str, port: int | None = None, wait: bool = True
    ) -> ServeProcess:
        proc = ServeProcess(config, *extra, port=port).start(wait=wait)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()


def scrape(url: str, timeout: float = 10, **kwargs: Any) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout, **kwargs) as response:
        return str(response.read().decode("utf-8"))


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def metric(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def gauge(url: str, name: str, **labels: str) -> float | None:
    """One sample of the exporter's /metrics at `url` (None when the series is absent)."""
    return metric(parse_metrics(scrape(url + "/metrics")), name, **labels)


def until(check: Callable[[], Any], timeout_s: float = 60, every_s: float = 0.2) -> Any:
    """Poll `check` until it returns something truthy (bounded; raises on time-out)."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except OSError as exc:  # not listening yet, connection reset, ...
            last = exc
        if last and not isinstance(last, Exception):
            return last
        time.sleep(every_s)
    raise AssertionError(f"condition not met in {timeout_s}s (last: {last!r})")
