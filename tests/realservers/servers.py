"""Real llama.cpp servers on 127.0.0.1 with the tiny model, as context managers.

    with LlamaServer(model, parallel=4, metrics=True) as srv:          # llama.cpp's own
        ... srv.url, srv.pid, srv.model_id ...
    with LlamaCppPythonServer(model, interrupt=False) as srv:          # python -m llama_cpp.server
        ...

Each picks a free port, starts the server as a child process in its own session (output
to a log file, `log_text()`), waits until it answers 200 on its readiness endpoint and
stops it on exit: SIGTERM, then SIGKILL, every wait bounded. A server that dies or never
gets ready raises `ServerError` with the tail of its log. Both build on first use
(`build.ensure_*`, cached).

`threads` defaults to 1: the tiny model gains nothing from more, and the tests' client
needs the other core.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.realservers import build

MODEL_ID = "tiny"
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 10.0
START_ATTEMPTS = 3  # a fresh port each time: another process may take the one we picked


_RUNNING: set[RealServer] = set()  # started and not yet stopped


@atexit.register
def _stop_all() -> None:
    """Never leave a server behind, even when a test run ends without stopping one."""
    for server in list(_RUNNING):
        server.stop()


class ServerError(RuntimeError):
    """A server that could not be started (the message ends with its log's tail)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RealServer:
    """One server child process; subclasses say how to run it and where it is ready.

    `process_name` is the process's name for the exporter's `process_name` setting.
    """

    ready_path = "/health"
    model_id = MODEL_ID
    process_name = ""

    def __init__(self, model: Path, *, threads: int = 1) -> None:
        self.model = Path(model)
        self.threads = threads
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._logdir: Path | None = None  # made by start(), removed by __exit__
        self._final_log: str | None = None

    # --- what subclasses define ---------------------------------------------------------

    def command(self, port: int) -> list[str]:
        raise NotImplementedError

    # --- the process ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise ServerError("not started")
        return self.proc.pid

    @property
    def log_path(self) -> Path:
        if self._logdir is None:
            self._logdir = Path(tempfile.mkdtemp(prefix=f"{type(self).__name__.lower()}-"))
        return self._logdir / "server.log"

    def log_text(self) -> str:
        """Everything the server printed (also after `__exit__` removed the log file)."""
        if self._final_log is not None:
            return self._final_log
        if self._logdir is None:
            return ""
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def _tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def start(self) -> Self:
        if not self.model.is_file():
            raise ServerError(f"no model file {self.model}")
        last = ""
        for _ in range(START_ATTEMPTS):
            port = free_port()
            cmd = self.command(port)
            with self.log_path.open("ab") as log:
                log.write(f"$ {' '.join(cmd)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                )
            self.port = port
            _RUNNING.add(self)
            try:
                self._wait_ready()
                return self
            except ServerError as e:
                last = str(e)
                self.stop()
        raise ServerError(f"{type(self).__name__} did not start: {last}")

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + READY_TIMEOUT_S
        url = self.url + self.ready_path
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(f"exited with {self.proc.returncode}\n{self._tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2.0) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.1)
        raise ServerError(f"not ready on {url} after {READY_TIMEOUT_S:.0f}s\n{self._tail()}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _RUNNING.discard(self)
        if proc is None or proc.poll() is not None:
            return
        for sig, wait_s in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, STOP_TIMEOUT_S)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                proc.wait(timeout=wait_s)
                return
            except subprocess.TimeoutExpired:
                continue

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._final_log = self.log_text()
        if self._logdir is not None:
            shutil.rmtree(self._logdir, ignore_errors=True)


class LlamaCppPythonServer(RealServer):
    """`python -m llama_cpp.server`: one request at a time.

    `interrupt=True` (the server's default `--interrupt_requests`) cuts a running stream
    off when a new request arrives; `interrupt=False` queues the new request instead.
    """

    ready_path = "/v1/models"
    process_name = "python"

    def __init__(
        self,
        model: Path,
        *,
        interrupt: bool,
        n_ctx: int = 2048,
        threads: int = 1,
        verbose: bool = False,
    ) -> None:
        super().__init__(model, threads=threads)
        self.interrupt = interrupt
        self.n_ctx = n_ctx
        self.verbose = verbose
        self.python = build.ensure_llama_cpp_python()

    def command(self, port: int) -> list[str]:
        return [
            str(self.python), "-m", "llama_cpp.server",
            "--model", str(self.model),
            "--model_alias", self.model_id,
            "--host", self.host,
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.threads),
            "--n_threads_batch", str(self.threads),
            "--interrupt_requests", str(self.interrupt),
            "--verbose", str(self.verbose),
        ]  # fmt: skip


class LlamaServer(RealServer):
    """llama.cpp's `llama-server`: `parallel` slots batched continuously.

    The context is `parallel × ctx_per_slot`; `metrics=True` exposes `llamacpp:*`
    Prometheus metrics on `/metrics`.
    """

    ready_path = "/health"
    process_name = "llama-server"

    def __init__(
        self,
        model: Path,
        *,
        parallel: int = 1,
        metrics: bool = True,
        ctx_per_slot: int = 1024,
        threads: int = 1,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        super().__init__(model, threads=threads)
        self.parallel = parallel
        self.metrics = metrics
        self.ctx_per_slot = ctx_per_slot
        self.extra_args = extra_args
        self.binary = build.ensure_llama_server()

    def command(self, port: int) -> list[str]:
        cmd = [
            str(self.binary),
            "--model", str(self.model),
            "--alias", self.model_id,
            "--host", self.host,
            "--port", str(port),
            "--ctx-size", str(self.parallel * self.ctx_per_slot),
            "--parallel", str(self.parallel),
            "--threads", str(self.threads),
            "--threads-batch", str(self.threads),
        ]  # fmt: skip
        if self.metrics:
            cmd.append("--metrics")
        return [*cmd, *self.extra_args]
