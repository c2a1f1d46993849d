"""Engine accuracy benchmark: is the client the bottleneck, and does it time correctly?

What it measures
    The project's real engine (``exporter.engine.run_level`` with the OpenAI backend)
    runs N closed-loop users (interval 0) against a target server whose answer takes a
    KNOWN fixed time, ``--delay``. For every level and mode (streaming or not) it
    reports:

    * error p50 / p99: measured latency minus ``--delay``, over the successful
      requests, in milliseconds. This is everything the client adds (connecting,
      encoding, parsing, event-loop lag) plus whatever the server adds;
    * server p99: the server's own handling time (from its handler being entered to
      the last byte written) minus ``--delay``, so the two can be told apart;
    * client CPU: user + system CPU time of this process over the level
      (``time.process_time()``), as a share of one core and per request;
    * server CPU: the same for the server process, to show it was not saturated;
    * requests, requests/s and errors + timeouts (must be 0; a loud warning otherwise).

    Progress goes to stderr, with the CPU the host's other processes used meanwhile
    (``psutil``): a busy neighbour on a small machine makes the numbers noisy.

How
    The target server is a small aiohttp app run in a SEPARATE process (this same file
    with a hidden ``--serve`` flag), so its CPU does not count as the engine's. It
    listens on 127.0.0.1 only and speaks enough of the OpenAI chat API:
    ``POST /v1/chat/completions`` sleeps until ``entry + delay`` (deadline based), then
    answers a ``chat.completion`` with finish_reason "stop" and usage; with
    ``"stream": true`` it sends the headers at once, then ``--chunks`` SSE chunks evenly
    spread over the delay, the last one (with finish_reason and usage) at the deadline,
    then ``data: [DONE]``. ``GET /stats`` returns (and clears) its handling times, and its
CPU time so far.

Run it (a full run takes about a minute and a half)::

    .venv/bin/python tests/benchmarks/engine_accuracy.py
    .venv/bin/python tests/benchmarks/engine_accuracy.py --levels 1,20,100,500 \\
        --duration 6 --delay 1.0 --modes stream,nostream

The Markdown table goes to stdout, progress to stderr. The exit status is 1 when any
request failed (the numbers are then not a clean measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import psutil
from aiohttp import web

from exporter.backends import Outcome, backend_for
from exporter.backends.base import SUCCESS
from exporter.config import ProbeSettings, adhoc_config
from exporter.engine import percentile, run_level
from exporter.memory import MemorySampler
from exporter.results import LevelResult

HOST = "127.0.0.1"
MODEL = "bench"
MODES = ("stream", "nostream")


# --- the target server (runs in its own process) ------------------------------------------


class FixedDelayServer:
    """An OpenAI chat endpoint whose every answer takes exactly `delay_s`."""

    def __init__(self, delay_s: float, chunks: int) -> None:
        self.delay_s = delay_s
        self.chunks = chunks
        self.handling_s: list[float] = []
        created = int(time.time())
        usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
        self.completion = json.dumps(
            {
                "id": "chatcmpl-bench",
                "object": "chat.completion",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "word " * chunks},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        ).encode()
        self.stream_chunks: list[bytes] = []
        for i in range(chunks):
            last = i == chunks - 1
            chunk: dict[str, object] = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": created,
                "model": MODEL,
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": "word "},
                        "finish_reason": "stop" if last else None,
                    }
                ],
            }
            if last:
                chunk["usage"] = usage
            self.stream_chunks.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_get("/stats", self.stats)
        return app

    async def chat(self, request: web.Request) -> web.StreamResponse:
        entered = time.perf_counter()
        deadline = entered + self.delay_s
        doc = await request.json()
        response: web.StreamResponse
        if isinstance(doc, dict) and doc.get("stream"):
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            for i, chunk in enumerate(self.stream_chunks, start=1):
                due = entered + self.delay_s * i / self.chunks
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
                await response.write(chunk)
            await response.write(b"data: [DONE]\n\n")
        else:
            await asyncio.sleep(max(0.0, deadline - time.perf_counter()))
            response = web.Response(body=self.completion, content_type="application/json")
            await response.prepare(request)
        await response.write_eof()
        self.handling_s.append(time.perf_counter() - entered)
        return response

    async def stats(self, _request: web.Request) -> web.Response:
        handling, self.handling_s = self.handling_s, []
        return web.json_response({"handling_s": handling, "cpu_s": time.process_time()})


async def serve(port: int, delay_s: float, chunks: int) -> None:
    runner = web.AppRunner(FixedDelayServer(delay_s, chunks).app(), access_log=None)
    await runner.setup()
    # A deep accept backlog: 500 users connect at the same instant, and an overflowing
    # SYN queue would add the kernel's 1 s SYN retransmit to their first request.
    site = web.TCPSite(runner, HOST, port, backlog=4096)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


# --- the client side (this process) -------------------------------------------------------


@dataclass(frozen=True)
class Row:
    mode: str
    users: int
    level: LevelResult
    error_p50_ms: float | None
    error_p99_ms: float | None
    server_p99_ms: float | None
    client_cpu_s: float
    server_cpu_s: float
    host_busy_s: float  # every process on the host, to spot a noisy neighbour
    wall_s: float

    @property
    def failures(self) -> int:
        return self.level.errors + self.level.timeouts


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(port: int, delay_s: float, chunks: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--serve",
        str(port),
        "--delay",
        repr(delay_s),
        "--chunks",
        str(chunks),
    ]
    return subprocess.Popen(command, stdin=subprocess.DEVNULL)


def wait_until_listening(server: subprocess.Popen[bytes], port: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the benchmark server exited early (status {server.returncode})")
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the benchmark server is not listening on {port}") from None
            time.sleep(0.05)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=5)


def host_busy_seconds() -> float:
    """CPU time every process of the host has used (guest time is within user).

    Interrupt time is left out: most of it is the loopback traffic of this benchmark.
    """
    times = psutil.cpu_times()
    return times.user + times.nice + times.system


def ms_over(values: Sequence[float], q: float, baseline_s: float) -> float | None:
    value = percentile(values, q)
    return None if value is None else (value - baseline_s) * 1000.0


async def server_stats(session: aiohttp.ClientSession, base_url: str) -> tuple[list[float], float]:
    """The server's handling times since the last call (then forgotten), and its CPU time."""
    async with session.get(f"{base_url}/stats") as response:
        response.raise_for_status()
        doc = await response.json()
    return sorted(float(x) for x in doc["handling_s"]), float(doc["cpu_s"])


async def measure(mode: str, users: int, args: argparse.Namespace, base_url: str) -> Row:
    settings = ProbeSettings(
        levels=(users,),
        duration_s=args.duration,
        interval_s=0.0,
        timeout_s=args.timeout,
        stream=mode == "stream",
        warmup=False,
    )
    config = adhoc_config(base_url, "openai", [MODEL], settings)
    server_config, model = config.targets()[0]
    backend = backend_for(server_config, model)
    latencies: list[float] = []

    def collect(outcome: Outcome) -> None:
        if outcome.kind == SUCCESS:
            latencies.append(outcome.latency_s)

    async with aiohttp.ClientSession() as stats:
        _, server_cpu0 = await server_stats(stats, base_url)  # also drops earlier times
        sampler = MemorySampler(0.25, 1.0)  # limit 1.0: the memory guard never trips
        # process_time() is this process's user + system CPU time (all threads) in ns
        # resolution; psutil's per-process cpu_times() count 10 ms clock ticks, too
        # coarse for the small levels. The server reports its own the same way.
        cpu0, busy0, wall0 = time.process_time(), host_busy_seconds(), time.perf_counter()
        level = await run_level(backend, users, sampler, on_outcome=collect)
        wall = time.perf_counter() - wall0
        cpu, busy = time.process_time() - cpu0, host_busy_seconds() - busy0
        handling, server_cpu1 = await server_stats(stats, base_url)
    server_cpu = server_cpu1 - server_cpu0
    latencies.sort()
    return Row(
        mode=mode,
        users=users,
        level=level,
        error_p50_ms=ms_over(latencies, 50, args.delay),
        error_p99_ms=ms_over(latencies, 99, args.delay),
        server_p99_ms=ms_over(handling, 99, args.delay),
        client_cpu_s=cpu,
        server_cpu_s=server_cpu,
        host_busy_s=busy,
        wall_s=wall,
    )


async def run_all(args: argparse.Namespace, base_url: str) -> list[Row]:
    rows: list[Row] = []
    for mode in args.modes:
        for users in args.levels:
            print(f"  {mode:>8} {users:>4} users ...", end="", file=sys.stderr, flush=True)
            row = await measure(mode, users, args, base_url)
            level = row.level
            others = max(0.0, row.host_busy_s - row.client_cpu_s - row.server_cpu_s) / row.wall_s
            print(
                f" {level.requests} requests, {row.failures} failed, {row.wall_s:.1f} s"
                f" (other processes: {others * 100:.0f}% of a core)",
                file=sys.stderr,
            )
            if others > 0.2:
                print(
                    f"WARNING: other processes used {others * 100:.0f}% of a core during "
                    "this level; its numbers may be noisy (a busy neighbour?)",
                    file=sys.stderr,
                )
            if row.failures:
                print(
                    f"WARNING: {mode} at {users} users: {level.errors} errors "
                    f"{level.errors_by_reason} and {level.timeouts} timeouts "
                    "- this level is NOT a clean measurement",
                    file=sys.stderr,
                )
            rows.append(row)
    return rows


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(rows: Sequence[Row]) -> str:
    header = (
        "| mode | users | requests | req/s | err | error p50 ms | error p99 ms "
        "| server p99 ms | client CPU % | CPU ms/request | server CPU % |"
    )
    lines = [header, "|" + "|".join(" ---: " for _ in range(header.count("|") - 1)) + "|"]
    lines[1] = lines[1].replace(" ---: ", " :--- ", 1)
    for r in rows:
        lvl = r.level
        rps = lvl.requests / lvl.elapsed_s if lvl.elapsed_s > 0 else 0.0
        per_request = r.client_cpu_s * 1000.0 / lvl.requests if lvl.requests else None
        lines.append(
            f"| {r.mode} | {r.users} | {lvl.requests} | {rps:.1f} | {r.failures} "
            f"| {fmt(r.error_p50_ms)} | {fmt(r.error_p99_ms)} | {fmt(r.server_p99_ms)} "
            f"| {r.client_cpu_s / r.wall_s * 100.0:.1f} | {fmt(per_request, 2)} "
            f"| {r.server_cpu_s / r.wall_s * 100.0:.1f} |"
        )
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------


def int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a list like 1,20,100") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("levels must be positive integers")
    return values


def mode_list(text: str) -> tuple[str, ...]:
    values = tuple(x.strip() for x in text.split(",") if x.strip())
    unknown = [v for v in values if v not in MODES]
    if not values or unknown:
        raise argparse.ArgumentTypeError(f"modes are {', '.join(MODES)} (got {text!r})")
    return values


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Timing error and CPU cost of the probe engine against a fixed-delay server."
    )
    parser.add_argument("--levels", type=int_list, default=(1, 20, 100, 500), metavar="N,N,...")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per level")
    parser.add_argument("--delay", type=float, default=1.0, help="the server's answer time (s)")
    parser.add_argument("--modes", type=mode_list, default=MODES, metavar="stream,nostream")
    parser.add_argument("--chunks", type=int, default=8, help="SSE chunks per streamed answer")
    parser.add_argument("--timeout", type=float, default=None, help="request timeout (s)")
    parser.add_argument("--serve", type=int, default=None, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.duration <= 0 or args.delay <= 0 or args.chunks < 1:
        parser.error("--duration and --delay must be > 0 and --chunks >= 1")
    if args.timeout is None:
        args.timeout = max(10.0, 5 * args.delay)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve is not None:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve(args.serve, args.delay, args.chunks))
        return 0

    port = free_port()
    base_url = f"http://{HOST}:{port}"
    started = time.perf_counter()
    server = start_server(port, args.delay, args.chunks)
    try:
        wait_until_listening(server, port, within_s=15.0)
        print(f"benchmark server pid {server.pid} on {base_url}", file=sys.stderr)
        rows = asyncio.run(run_all(args, base_url))
    finally:
        stop_server(server)
    total = time.perf_counter() - started

    print(
        f"Machine: {os.cpu_count()} cores ({platform.system()} {platform.machine()}), "
        f"Python {platform.python_version()}, aiohttp {aiohttp.__version__}. "
        f"Server: separate process on 127.0.0.1, fixed delay {args.delay:g} s"
        f" ({args.chunks} SSE chunks when streaming). "
        f"Each level: {args.duration:g} s, interval 0, timeout {args.timeout:g} s."
    )
    print()
    print(table(rows))
    print()
    print(
        "error = measured latency - delay; server = server-side handling time - delay; "
        "CPU % is of one core."
    )
    print(f"(total run time {total:.0f} s)", file=sys.stderr)
    failed = [r for r in rows if r.failures]
    if failed:
        print(
            f"WARNING: {len(failed)} level(s) had errors or timeouts; see above.",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
