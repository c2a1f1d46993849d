"""What every backend shares: the outcome of one request, and how one request is made.

A backend turns the configured prompt into one HTTP request and one classified
`Outcome`. Subclasses only say what to send and how to read the answer; sending,
timing, timeouts, HTTP status mapping and the stale-connection retry live here once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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


def new_session(limit: int, *, reuse: bool = True) -> aiohttp.ClientSession:
    """An HTTP session with at least `limit` connections and no timeouts of its own.

    Timeouts are the engine's (one deadline per request over the whole answer), so
    aiohttp's are disabled rather than stacked. `reuse=False`: a new connection for
    every request.
    """
    connector = aiohttp.TCPConnector(
        limit=max(limit, 1), limit_per_host=0, ttl_dns_cache=300, force_close=not reuse
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=None, sock_read=None),
        trace_configs=[tracing()],
        auto_decompress=True,
    )


class HttpClient:
    """The HTTP client of one level: one pool of at least `limit` connections, shared by
    all its users, plus a pool-less session opened only for servers that turn out to
    close the connection after each streamed answer (see `Backend.execute`).
    """

    def __init__(self, limit: int) -> None:
        self.limit = max(limit, 1)
        self.pooled = new_session(self.limit)
        self._fresh: aiohttp.ClientSession | None = None

    def fresh(self) -> aiohttp.ClientSession:
        if self._fresh is None:
            self._fresh = new_session(self.limit, reuse=False)
        return self._fresh

    async def close(self) -> None:
        await self.pooled.close()
        if self._fresh is not None:
            await self._fresh.close()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()


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
        # Learned while probing: the server closes the connection after streamed answers.
        self.closes_after_stream = False

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
        client: HttpClient,
        timeout_s: float,
        *,
        max_tokens: int | None = None,
        stream: bool | None = None,
    ) -> Outcome:
        """Send one request and classify it. Never raises, except CancelledError.

        Pooled connections can die under us: llama.cpp's llama-server closes the
        connection right after each streamed answer while still sending `Keep-Alive`, and
        any server may close an idle keep-alive connection just as we reuse it. A request
        that fails on a *reused* connection before any byte of the answer came back never
        reached the model: it is sent again, at most STALE_CONNECTION_RETRIES times, on a
        new connection, and its latency includes that. Anything else counts as what it is.
        When that happens to a streamed request, the server is one that closes after
        streams: from then on this backend's streamed requests skip the pool (a new
        connection each), rather than finding a dead one nearly every time at interval 0.
        Servers that keep connections alive keep the pool, which is much cheaper at
        hundreds of users (see the engine benchmark in the README).
        """
        streaming = self.settings.stream if stream is None else stream
        request = self.build(max_tokens=max_tokens, stream=streaming)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(timeout_s):
                return await self._send(client, request, streaming, started)
        except TimeoutError:
            return Outcome(
                TIMEOUT, time.perf_counter() - started, detail=f"no answer in {timeout_s:g}s"
            )

    async def _send(
        self, client: HttpClient, request: HttpRequest, streaming: bool, started: float
    ) -> Outcome:
        session = client.fresh() if streaming and self.closes_after_stream else client.pooled
        for attempt in range(STALE_CONNECTION_RETRIES + 1):
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
                if trace.reused and attempt < STALE_CONNECTION_RETRIES:
                    if streaming:
                        self.closes_after_stream = True
                    session = client.fresh()
                    continue
                return self._error(started, DISCONNECTED, _describe(exc))
            except aiohttp.ClientError as exc:
                return self._error(started, DISCONNECTED, _describe(exc))
            return await self._receive(response, streaming, started)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _receive(
        self, response: aiohttp.ClientResponse, streaming: bool, started: float
    ) -> Outcome:
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

    # A cheap GET every server of this API answers (the model list).
    listing_path = "/v1/models"

    async def open_connections(self, client: HttpClient, n: int, timeout_s: float = 2.0) -> None:
        """Open `n` pooled connections before a level starts, with `n` cheap listing
        requests, so that its N users really start at the same moment instead of queueing
        behind N TCP handshakes in one event loop. Uncounted; failures are ignored (the
        level's own requests will say what is wrong)."""

        async def one() -> None:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with (
                    asyncio.timeout(timeout_s),
                    client.pooled.get(
                        self.endpoint_url(self.listing_path), headers=self.auth_headers()
                    ) as response,
                ):
                    await response.read()

        await asyncio.gather(*(one() for _ in range(n)))

    def endpoint_url(self, path: str) -> str:
        base = self.server.url
        # Users often paste the OpenAI base URL (".../v1"): accept both forms.
        if path.startswith("/v1/") and base.endswith("/v1"):
            path = path[3:]
        return base + path


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


def json_object(data: bytes) -> dict[str, Any]:
    """Decode one JSON object of an answer.

    A document that is valid JSON cut off at its end is `truncated` (the server stopped
    mid-answer); anything else that does not decode is `invalid_response`.
    """
    try:
        doc = json.loads(data)
    except ValueError as exc:
        text = data.decode("utf-8", "replace").rstrip()
        cut_short = (
            isinstance(exc, json.JSONDecodeError) and exc.pos >= len(text) and text[:1] in "{["
        )
        reason = TRUNCATED if cut_short and text else INVALID_RESPONSE
        raise AnswerError(reason, f"not JSON: {data[:80]!r}") from None
    if not isinstance(doc, dict):
        raise AnswerError(INVALID_RESPONSE, f"not a JSON object: {data[:80]!r}")
    return doc


def require(condition: bool, detail: str, reason: str = INVALID_RESPONSE) -> None:
    """Parser helper: raise AnswerError(reason) unless condition holds."""
    if not condition:
        raise AnswerError(reason, detail)
