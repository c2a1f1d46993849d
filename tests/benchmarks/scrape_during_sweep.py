"""How long a /metrics scrape takes while the exporter sweeps 20 (or more) users.

Starts the simulator (seed profile) and `serve` as separate processes on 127.0.0.1,
scrapes /metrics as fast as it can while idle and while a level runs, and prints the
scrape latency (p50, p99, max) of both phases. The sweep must never delay a scrape.

    .venv/bin/python tests/benchmarks/scrape_during_sweep.py [--users 20] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer in {timeout_s}s")


def scrape_ms(url: str) -> float:
    started = time.perf_counter()
    urllib.request.urlopen(url, timeout=10).read()
    return (time.perf_counter() - started) * 1000


def running(url: str) -> bool:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return any(
        line.startswith("llm_probe_sweep_running{") and line.endswith(" 1.0")
        for line in text.splitlines()
    )


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"| {len(samples)} | {statistics.median(ordered):.1f} | {p99:.1f} | {ordered[-1]:.1f} |"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of the level")
    args = parser.parse_args()
    sim_port, port = free_port(), free_port()
    work = Path(tempfile.mkdtemp(prefix="scrape-bench-"))
    config = work / "config.yaml"
    config.write_text(
        "servers:\n"
        "  - name: sim\n"
        f"    url: http://127.0.0.1:{sim_port}\n"
        "    models: [qwen_coder]\n"
        f"probe: {{levels: [{args.users}], duration: {args.seconds}s, interval: 0s,"
        " timeout: 60s, warmup: false}\n"
        "schedule: {sweep: 1h, heartbeat: 1h, run_on_start: false}\n"
        f"snapshot: {{path: {work}/snapshot.md}}\n"
        f"state_dir: {work}/state\n"
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    py = [sys.executable, "-m", "exporter"]
    sim = subprocess.Popen(
        [*py, "simulate", "--profile", "seed", "--port", str(sim_port), "--time-scale", "0.1"],
        stdout=subprocess.DEVNULL,
        env=env,
    )
    exporter = subprocess.Popen(
        [*py, "serve", "--config", str(config), "--web.listen-address", f"127.0.0.1:{port}"],
        stderr=subprocess.DEVNULL,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(base + "/-/ready")
        idle = [scrape_ms(base + "/metrics") for _ in range(200)]
        # Start the sweep now by moving its schedule: reload with run_on_start.
        config.write_text(config.read_text().replace("run_on_start: false", "run_on_start: true"))
        config.write_text(config.read_text().replace("models: [qwen_coder]", "models: [phi4_fast]"))
        reload = urllib.request.Request(base + "/-/reload", data=b"", method="POST")
        assert json.loads(urllib.request.urlopen(reload, timeout=10).read())["status"] == "success"
        deadline = time.monotonic() + 30
        while not running(base + "/metrics"):
            if time.monotonic() > deadline:
                raise SystemExit("the sweep did not start")
            time.sleep(0.05)
        busy: list[float] = []
        while running(base + "/metrics"):
            busy.append(scrape_ms(base + "/metrics"))
    finally:
        for proc in (exporter, sim):
            proc.terminate()
            proc.wait(timeout=10)
    print(
        f"Machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}. Simulator: seed "
        f"profile (phi4_fast: 1 slot, 0.158 s), {args.users} users, interval 0, "
        f"level of {args.seconds:g} s; scrapes back to back from one client.\n"
    )
    print("| phase | scrapes | p50 ms | p99 ms | max ms |")
    print("| :--- | ---: | ---: | ---: | ---: |")
    print("| idle " + summary(idle))
    print(f"| during a {args.users}-user level " + summary(busy))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
