"""Shared fixtures: real simulators on 127.0.0.1, in-process or as a separate process."""

from __future__ import annotations

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
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
