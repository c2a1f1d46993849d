"""What every backend shares: the outcome of one request, and how one request is made.

A backend turns the configured prompt into one HTTP request and one classified
`Outcome`. Subclasses only say what to send and how to read the answer; sending,
timing, timeouts, HTTP status mapping and the stale-connection retry live here once.
"""

from __future__ import annotations

import asyncio
import errno
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp

from exporter.config import ModelConfig, ServerConfig

SUCCESS: Literal["success"] = "success"
ERROR: Literal["error"] = "error"
TIMEOUT: Literal["timeout"] = "timeout"
OutcomeKind = Literal["success", "error", "timeout"]

# Error reasons: a small fixed set, used as the `reason` label of llm_probe_errors_total.
CONNECT = "connect"  # could not connect (refused, DNS, TLS)
DISCONNECTED = "disconnected"  # the connection dropped before the answer was complete
HTTP_4XX = "http_4xx"
HTTP_5XX = "http_5xx"
OVERLOADED = "overloaded"  # 429 or 503: the server says it is full
INVALID_RESPONSE = "invalid_response"  # a 200 whose body is not a valid completion
TRUNCATED = "truncated"  # a well-formed answer that ended without a finish reason / done
CANCELLED = "cancelled"  # aborted by the memory guard or shutdown while in flight
ERROR_REASONS = (
    CONNECT,
    DISCONNECTED,
    HTTP_4XX,
    HTTP_5XX,
    OVERLOADED,
    INVALID_RESPONSE,
    TRUNCATED,
    CANCELLED,
)

# How many times a request that died on a *reused* pooled connection before any byte of
# the answer came back is sent again on another connection (see `Backend.execute`).
STALE_CONNECTION_RETRIES = 2


@dataclass(frozen=True)
class Outcome:
    """The classified result of one request."""

    kind: OutcomeKind
    latency_s: float
    reason: str | None = None
    ttft_s: float | None = None
    output_tokens: int | None = None
    load_duration_s: float | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.kind == SUCCESS


class AnswerError(Exception):
    """Raised by a parser: the answer is unusable for `reason`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass
class Answer:
    """What a parser read from a complete answer."""

    output_tokens: int | None = None
    first_token_at: float | None = None  # perf_counter() when the first content arrived
    load_duration_s: float | None = None


@dataclass
class _RequestTrace:
    """Per-request context filled by aiohttp's tracing signals."""

    reused: bool = False


def tracing() -> aiohttp.TraceConfig:
    """A TraceConfig that notes whether a request went out on a reused pooled connection."""

    async def on_reuse(
        _session: aiohttp.ClientSession, ctx: SimpleNamespace, _params: object
    ) -> None:
        trace = ctx.trace_request_ctx
        if isinstance(trace, _RequestTrace):
            trace.reused = True

    config = aiohttp.TraceConfig()
    config.on_connection_reuseconn.append(on_reuse)
    return config


def new_session(limit: int) -> aiohttp.ClientSession:
    """The HTTP client for one level: pooled, at least `limit` connections, no own timeouts.

    Timeouts are the engine's (one deadline per request over the whole answer), so
    aiohttp's are disabled rather than stacked.
    """
    connector = aiohttp.TCPConnector(limit=max(limit, 1), limit_per_host=0, ttl_dns_cache=300)
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
        trace_configs=[tracing()],
        auto_decompress=True,
    )


@dataclass(frozen=True)
class HttpRequest:
    url: str
    body: Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


class Backend(ABC):
    """One API flavour. Subclasses build the request and parse the answer."""

    api: str = ""

    def __init__(self, server: ServerConfig, model: ModelConfig) -> None:
        self.server = server
        self.model = model
        self.settings = model.probe

    @abstractmethod
    def build(self, *, max_tokens: int | None = None, stream: bool | None = None) -> HttpRequest:
        """The request for the configured prompt (overrides for heartbeats)."""

    @abstractmethod
    async def read_answer(self, response: aiohttp.ClientResponse, stream: bool) -> Answer:
        """Read the whole answer; raise AnswerError when it is not a valid completion."""

    def auth_headers(self) -> dict[str, str]:
        key = self.server.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    async def execute(
        self,
        session: aiohttp.ClientSession,
        timeout_s: float,
        *,
        max_tokens: int | None = None,
        stream: bool | None = None,
    ) -> Outcome:
        """Send one request and classify it. Never raises, except CancelledError.

        llama.cpp's llama-server closes the connection right after each streamed answer
        while still sending `Keep-Alive`, so a pooled connection can be handed out just as
        it dies. A request that fails on a *reused* connection before any byte of the
        answer came back never reached the model: it is sent again (at most
        STALE_CONNECTION_RETRIES times), on a fresh connection. Anything else counts.
        """
        streaming = self.settings.stream if stream is None else stream
        request = self.build(max_tokens=max_tokens, stream=streaming)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                return await self._send(session, request, streaming, started)
        except TimeoutError:
            return Outcome(
                TIMEOUT, time.perf_counter() - started, detail=f"no answer in {timeout_s:g}s"
            )

    async def _send(
        self,
        session: aiohttp.ClientSession,
        request: HttpRequest,
        streaming: bool,
        started: float,
    ) -> Outcome:
        attempt = 0
        while True:
            trace = _RequestTrace()
            try:
                response = await session.post(
                    request.url,
                    json=request.body,
                    headers={**self.auth_headers(), **request.headers},
                    trace_request_ctx=trace,
                )
            except aiohttp.ClientConnectorError as exc:
                # Before ClientOSError: it is a subclass, and means "never connected".
                return self._error(started, CONNECT, _describe(exc))
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if trace.reused and attempt < STALE_CONNECTION_RETRIES and _is_stale(exc):
                    attempt += 1
                    continue
                return self._error(started, DISCONNECTED, _describe(exc))
            except aiohttp.ClientError as exc:
                return self._error(started, DISCONNECTED, _describe(exc))
            break
        async with response:
            if response.status >= 400:
                text = await _short_body(response)
                return self._error(started, _status_reason(response.status), text)
            try:
                answer = await self.read_answer(response, streaming)
            except AnswerError as exc:
                return self._error(started, exc.reason, exc.detail)
            except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError) as exc:
                return self._error(started, DISCONNECTED, _describe(exc))
            except aiohttp.ClientError as exc:
                return self._error(started, DISCONNECTED, _describe(exc))
            except (UnicodeDecodeError, ValueError) as exc:
                return self._error(started, INVALID_RESPONSE, _describe(exc))
        finished = time.perf_counter()
        ttft = None if answer.first_token_at is None else answer.first_token_at - started
        return Outcome(
            SUCCESS,
            finished - started,
            ttft_s=ttft,
            output_tokens=answer.output_tokens,
            load_duration_s=answer.load_duration_s,
        )

    @staticmethod
    def _error(started: float, reason: str, detail: str) -> Outcome:
        return Outcome(ERROR, time.perf_counter() - started, reason=reason, detail=detail[:200])

    def endpoint_url(self, path: str) -> str:
        base = self.server.url
        # Users often paste the OpenAI base URL (".../v1"): accept both forms.
        if path.startswith("/v1/") and base.endswith("/v1"):
            path = path[3:]
        return base + path


def _is_stale(exc: BaseException) -> bool:
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return getattr(exc, "errno", None) in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)


def _status_reason(status: int) -> str:
    if status in (429, 503):
        return OVERLOADED
    return HTTP_4XX if status < 500 else HTTP_5XX


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"


async def _short_body(response: aiohttp.ClientResponse) -> str:
    try:
        raw = await response.content.read(300)
    except aiohttp.ClientError:
        raw = b""
    body = raw.decode("utf-8", "replace").strip().replace("\n", " ")
    return f"HTTP {response.status}: {body}" if body else f"HTTP {response.status}"


def require(condition: bool, detail: str, reason: str = INVALID_RESPONSE) -> None:
    """Parser helper: raise AnswerError(reason) unless condition holds."""
    if not condition:
        raise AnswerError(reason, detail)
