"""The simulated model server: an aiohttp app speaking the OpenAI and Ollama APIs.

Each model of the profile has its own FIFO queue of ``parallel`` slots, a fixed
service time (plus an optional per-token time), lazy loading, real memory, and
injectable faults (see ``profiles.py``).

Model APIs:
    GET  /v1/models, POST /v1/chat/completions, POST /v1/completions   (OpenAI, SSE)
    GET  /api/tags, GET /api/ps, GET /api/version, POST /api/chat, POST /api/generate
                                                                        (Ollama, NDJSON)
    GET  /health -> {"status": "ok"};  GET / -> "Ollama is running"

Runtime control, for tests and demos:
    GET  /-/sim/stats
        {"server_name", "memory_cap_mb", "allocated_mb", "time_scale",
         "models": {NAME: {"requests", "active", "queued", "loaded", "loading",
                           "served", "rejected", "errors", "hung", "malformed",
                           "truncated", "dropped", "cancelled", "loads", "unloads",
                           "peak_active", "peak_queued", "parallel", "allocated_mb"}}}
        (``requests`` counts every generation request received, ``served`` the
        complete, fault-free answers, ``active`` requests holding a slot.)
    POST /-/sim/models/{name}/faults   JSON object of fault fields to change, validated
        like the YAML (400 {"error": ...} on a bad key or value); answers the new
        faults. Setting faults restarts that model's fault RNG from ``seed``.
    POST /-/sim/models/{name}/unload   unload now (the next request loads again).

A request that hangs is held until its client goes away or the server stops.
When embedding ``Simulator.app()`` in another runner, pass
``handler_cancellation=True`` so a client disconnecting frees its slot at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from aiohttp import web

from exporter.simulator import wire
from exporter.simulator.memory import MIB, MemoryPool
from exporter.simulator.profiles import ProfileError, SimulatorProfile, update_faults
from exporter.simulator.runtime import Fault, ModelRuntime, sleep_until
from exporter.simulator.wire import Answer, Api, Ask, BadRequest, Kind

# At most one stream chunk per this interval: a writer that wakes for every token
# would slow a fast model down and make the loop, not the profile, set the pace.
CHUNK_INTERVAL_S = 0.005
# Like llama-server: the connection is closed just after a streamed answer that
# advertised keep-alive, when the client has already put it back in its pool.
CLOSE_AFTER_STREAM_DELAY_S = 0.001
KEEP_ALIVE_HEADERS = {"Connection": "keep-alive", "Keep-Alive": "timeout=5, max=100"}
# stop() aborts in-flight requests first; this only bounds a stuck shutdown.
SHUTDOWN_TIMEOUT_S = 1.0
# What /api/ps shows for a model that never unloads (Ollama's keep_alive: -1 looks alike).
_NEVER_EXPIRES = "2318-01-01T00:00:00Z"

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Simulator:
    """A simulated multi-model LLM server built from a ``SimulatorProfile``."""

    def __init__(self, profile: SimulatorProfile, time_scale: float = 1.0) -> None:
        if not math.isfinite(time_scale) or time_scale < 0:
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale!r}")
        self.profile = profile
        self.time_scale = time_scale
        self._pool = MemoryPool(profile.memory_cap_mb)
        self._models = {m.name: ModelRuntime(m, self._pool, time_scale) for m in profile.models}
        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._host = "127.0.0.1"
        self._port: int | None = None
        self._stopped = False
        self._ids = itertools.count(1)
        self._started_at = datetime.now(UTC)
        # handler task -> its request, so shutdown can end every one of them
        self._inflight: dict[asyncio.Task[Any], web.Request] = {}
        # transports that will be closed after a streamed answer (close_after_stream)
        self._doomed: set[asyncio.BaseTransport] = set()

    # --- lifecycle

    def app(self) -> web.Application:
        """The aiohttp application (created once)."""
        if self._app is None:
            app = web.Application(middlewares=[self._guard])
            routes: list[tuple[str, str, Handler]] = [
                ("GET", "/", self._root),
                ("GET", "/health", self._health),
                ("GET", "/metrics", self._metrics),
                ("GET", "/v1/models", self._openai_models),
                ("POST", "/v1/chat/completions", self._endpoint("openai", "chat")),
                ("POST", "/v1/completions", self._endpoint("openai", "completion")),
                ("GET", "/api/tags", self._ollama_tags),
                ("GET", "/api/ps", self._ollama_ps),
                ("GET", "/api/version", self._ollama_version),
                ("POST", "/api/chat", self._endpoint("ollama", "chat")),
                ("POST", "/api/generate", self._endpoint("ollama", "completion")),
                ("GET", "/-/sim/stats", self._stats),
                ("POST", "/-/sim/models/{name}/faults", self._set_faults),
                ("POST", "/-/sim/models/{name}/unload", self._unload),
            ]
            for method, path, handler in routes:
                app.router.add_route(method, path, handler)
            app.on_shutdown.append(self._on_shutdown)
            app.on_cleanup.append(self._on_cleanup)
            self._app = app
        return self._app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on ``host:port`` (0: any free port); the bound port."""
        if self._runner is not None or self._stopped:
            raise RuntimeError("a Simulator can be started once")
        runner = web.AppRunner(
            self.app(), handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._host = host
        self._port = int(runner.addresses[0][1])
        return self._port

    async def stop(self) -> None:
        """Stop listening, end in-flight (and hung) requests, free all memory."""
        if self._stopped:
            return
        self._stopped = True
        if self._runner is not None:
            await self._runner.cleanup()  # runs _on_shutdown and _on_cleanup
            self._runner = None
        else:
            await self._on_shutdown(None)
            await self._on_cleanup(None)

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """Base URL to reach the server, e.g. ``http://127.0.0.1:8000``."""
        host = self._host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"  # a wildcard bind is reached through loopback
        return f"http://{_url_host(host)}:{self.port}"

    async def _on_shutdown(self, _app: web.Application | None) -> None:
        # Like a server process being stopped: connections of requests still in
        # flight (queued, in service, hung) are cut, and their handlers ended.
        tasks = list(self._inflight)
        for task, request in list(self._inflight.items()):
            if request.transport is not None:
                request.transport.abort()
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=SHUTDOWN_TIMEOUT_S)

    async def _on_cleanup(self, _app: web.Application | None) -> None:
        for runtime in self._models.values():
            runtime.close()
        self._pool.release_all()

    # --- plumbing

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        transport = request.transport
        if transport is not None and transport in self._doomed:
            # A request that raced the close of a close_after_stream connection:
            # it gets no answer, as with the real server.
            transport.close()
            return web.Response(status=503)  # cannot be written any more; aiohttp ignores it
        task = asyncio.current_task()
        assert task is not None
        self._inflight[task] = request
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except ConnectionError:
            # The client went away while we wrote; nothing more can be sent.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)
        except Exception:
            # A bug must cost one response, never the server.
            log.exception("simulator failed on %s %s", request.method, request.path)
            return web.json_response({"error": "simulator internal error"}, status=500)
        finally:
            self._inflight.pop(task, None)

    def _endpoint(self, api: Api, kind: Kind) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._generate(request, api, kind)

        return handle

    def _runtime(self, name: str) -> ModelRuntime | None:
        runtime = self._models.get(name)
        if runtime is None and name.endswith(":latest"):
            runtime = self._models.get(name.removesuffix(":latest"))
        return runtime

    # --- generation

    async def _generate(self, request: web.Request, api: Api, kind: Kind) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        arrival = loop.time()
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            return _bad_request(api, "invalid JSON in request body")
        try:
            ask = (
                wire.parse_openai(body, kind) if api == "openai" else wire.parse_ollama(body, kind)
            )
        except BadRequest as exc:
            return _bad_request(api, str(exc))
        runtime = self._runtime(ask.model)
        if runtime is None:
            return _model_not_found(api, ask.model)
        runtime.arrive()
        if ask.load_only:
            await runtime.ensure_loaded(arrival)
            return web.json_response(wire.ollama_loaded(ask))
        if runtime.queue_full():
            runtime.stats.rejected += 1
            return _queue_full(api, runtime.faults.queue_full_status)
        fault = runtime.decide_fault()
        try:
            lease = await runtime.acquire()
        except asyncio.CancelledError:
            runtime.stats.cancelled += 1
            raise
        deadline = math.inf
        allocation = None
        try:
            service_start = await runtime.ensure_loaded(lease.start)
            allocation = await self._pool.allocate(runtime.name, runtime.profile.per_request_mb)
            if fault is Fault.ERROR:
                runtime.stats.errors += 1
                return _internal_error(api)
            if fault is Fault.HANG:
                runtime.stats.hung += 1
                # Held (slot and memory included) until the client gives up or stop().
                await loop.create_future()
            tokens, finish = wire.output_tokens(runtime.profile.output_tokens, ask.max_tokens)
            deadline = service_start + runtime.service_seconds(tokens)
            answer = Answer(
                id=f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-sim-{next(self._ids)}",
                created=int(time.time()),
                tokens=tokens,
                finish_reason=finish,
                arrival=arrival,
                service_start=service_start,
                load_s=service_start - lease.start,
                deadline=deadline,
            )
            if ask.stream:
                return await self._stream(request, runtime, ask, answer, fault)
            return await self._respond(request, runtime, ask, answer, fault)
        except (asyncio.CancelledError, ConnectionError):
            runtime.stats.cancelled += 1  # the client went away (or the server is stopping)
            raise
        finally:
            if allocation is not None:
                allocation.release()
            # At the deadline when the answer ran its course, else now (cut short):
            # the next request's service time counts from there, without drift.
            lease.release(at=deadline)

    async def _respond(
        self, request: web.Request, runtime: ModelRuntime, ask: Ask, answer: Answer, fault: Fault
    ) -> web.StreamResponse:
        """A non-streamed answer, sent whole at the deadline."""
        loop = asyncio.get_running_loop()
        if fault is Fault.TRUNCATE:
            # Generation stops halfway: a well-formed answer with half the text and no
            # finish_reason (OpenAI) / done:false (Ollama).
            await sleep_until((answer.service_start + answer.deadline) / 2)
            runtime.stats.truncated += 1
            cut = replace(answer, tokens=answer.tokens // 2, finish_reason=None)
            if ask.api == "openai":
                return web.json_response(wire.openai_completion(ask, cut))
            return web.json_response(wire.ollama_piece(ask, wire.token_text(0, cut.tokens)))
        await sleep_until(answer.deadline)
        if ask.api == "openai":
            payload = wire.openai_completion(ask, answer)
        else:
            payload = wire.ollama_final(ask, answer, loop.time(), wire.token_text(0, answer.tokens))
        body = wire.dumps(payload)
        if fault is Fault.MALFORMED:
            runtime.stats.malformed += 1
            return web.Response(text=wire.GARBAGE, content_type="application/json")
        if fault is Fault.DROP:
            # Headers and part of the body go out, then the connection dies: the
            # client sees an incomplete answer, not a refused request it could retry.
            runtime.stats.dropped += 1
            resp = web.StreamResponse()
            resp.content_type = "application/json"
            resp.content_length = len(body)
            await resp.prepare(request)
            await resp.write(body[: len(body) // 2])
            _abort(request)
            return resp
        runtime.stats.served += 1
        return web.Response(body=body, content_type="application/json")

    async def _stream(
        self, request: web.Request, runtime: ModelRuntime, ask: Ask, answer: Answer, fault: Fault
    ) -> web.StreamResponse:
        """A streamed answer: tokens spread evenly over the service time, last at the deadline."""
        loop = asyncio.get_running_loop()
        openai = ask.api == "openai"
        close_after = runtime.faults.close_after_stream
        resp = web.StreamResponse(headers=KEEP_ALIVE_HEADERS if close_after else None)
        if openai:
            resp.content_type = "text/event-stream"
            resp.headers["Cache-Control"] = "no-cache"
        else:
            resp.content_type = "application/x-ndjson"
        await resp.prepare(request)
        service = answer.service_s
        # (the epsilon keeps 20 ms / 5 ms from flooring to 3)
        chunks = max(1, min(answer.tokens, int(service / CHUNK_INTERVAL_S + 1e-9)))
        # truncated and dropped streams stop after about half of the chunks
        cut = max(1, chunks // 2) if fault in (Fault.TRUNCATE, Fault.DROP) else chunks
        for index in range(1, cut + 1):
            await sleep_until(answer.service_start + service * index / chunks)
            text = wire.token_text(
                answer.tokens * (index - 1) // chunks, answer.tokens * index // chunks
            )
            if fault is Fault.MALFORMED:
                data = (b"data: " if openai else b"") + wire.GARBAGE.encode() + b"\n\n"
            elif openai:
                data = wire.openai_delta(ask, answer, text, first=index == 1)
            else:
                data = wire.ndjson(wire.ollama_piece(ask, text))
            await resp.write(data)
        if fault is Fault.DROP:
            runtime.stats.dropped += 1
            _abort(request)
            return resp
        if fault is Fault.TRUNCATE:
            runtime.stats.truncated += 1
            tail = wire.SSE_DONE if openai else b""  # no finish_reason / no done:true
        elif fault is Fault.MALFORMED:
            runtime.stats.malformed += 1
            tail = wire.SSE_DONE if openai else b""
        else:
            runtime.stats.served += 1
            if openai:
                tail = wire.openai_stream_end(ask, answer)
            else:
                tail = wire.ndjson(wire.ollama_final(ask, answer, loop.time()))
        if tail:
            await resp.write(tail)
        await resp.write_eof()
        if close_after:
            self._close_soon(request)
        return resp

    def _close_soon(self, request: web.Request) -> None:
        transport = request.transport
        if transport is None:
            return
        self._doomed.add(transport)

        def close() -> None:
            self._doomed.discard(transport)
            transport.close()

        asyncio.get_running_loop().call_later(CLOSE_AFTER_STREAM_DELAY_S, close)

    # --- listings

    async def _root(self, _request: web.Request) -> web.StreamResponse:
        return web.Response(text="Ollama is running")

    async def _health(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({"status": "ok"})

    async def _metrics(self, _request: web.Request) -> web.StreamResponse:
        """llama-server's own gauges (`--metrics`), summed over the models: what the
        exporter reads during a level to tell queueing from slower service."""
        processing = sum(r.active for r in self._models.values())
        deferred = sum(r.queued for r in self._models.values())
        text = (
            "# HELP llamacpp:requests_processing Number of requests processing.\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            f"llamacpp:requests_processing {processing}\n"
            "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
            "# TYPE llamacpp:requests_deferred gauge\n"
            f"llamacpp:requests_deferred {deferred}\n"
        )
        return web.Response(text=text, content_type="text/plain", charset="utf-8")

    async def _openai_models(self, _request: web.Request) -> web.StreamResponse:
        created = int(self._started_at.timestamp())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "simulator"}
            for name in self._models
        ]
        return web.json_response({"object": "list", "data": data})

    def _ollama_model(self, runtime: ModelRuntime) -> dict[str, Any]:
        name = wire.ollama_name(runtime.name)
        return {
            "name": name,
            "model": name,
            "size": int(runtime.profile.resident_mb * MIB),
            "digest": hashlib.sha256(runtime.name.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "simulated",
                "families": ["simulated"],
                "parameter_size": "0B",
                "quantization_level": "Q4_0",
            },
        }

    async def _ollama_tags(self, _request: web.Request) -> web.StreamResponse:
        modified = self._started_at.isoformat().replace("+00:00", "Z")
        models = [
            self._ollama_model(runtime) | {"modified_at": modified}
            for runtime in self._models.values()
        ]
        return web.json_response({"models": models})

    async def _ollama_ps(self, _request: web.Request) -> web.StreamResponse:
        models = []
        for runtime in self._models.values():
            if not runtime.loaded:
                continue
            expires_in = runtime.expires_in()
            expires_at = (
                _NEVER_EXPIRES
                if expires_in is None
                else (datetime.now(UTC) + timedelta(seconds=expires_in))
                .isoformat()
                .replace("+00:00", "Z")
            )
            models.append(self._ollama_model(runtime) | {"expires_at": expires_at, "size_vram": 0})
        return web.json_response({"models": models})

    async def _ollama_version(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response({"version": "0.0.0-simulator"})

    # --- runtime control

    def stats(self) -> dict[str, Any]:
        """What ``GET /-/sim/stats`` answers (see the module docstring)."""
        return {
            "server_name": self.profile.server_name,
            "memory_cap_mb": self._pool.cap_mb,
            "allocated_mb": round(self._pool.used_mb(), 3),
            "time_scale": self.time_scale,
            "models": {name: runtime.snapshot() for name, runtime in self._models.items()},
        }

    async def _stats(self, _request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _set_faults(self, request: web.Request) -> web.StreamResponse:
        runtime = self._models.get(request.match_info["name"])
        if runtime is None:
            return web.json_response({"error": "unknown model"}, status=404)
        try:
            doc = await request.json()
        except (ValueError, UnicodeDecodeError):
            return web.json_response({"error": "invalid JSON in request body"}, status=400)
        try:
            faults = update_faults(runtime.faults, doc)
        except ProfileError as exc:
            return web.json_response({"error": str(exc)}, status=400)
        runtime.set_faults(faults)
        return web.json_response({"model": runtime.name, "faults": asdict(faults)})

    async def _unload(self, request: web.Request) -> web.StreamResponse:
        runtime = self._models.get(request.match_info["name"])
        if runtime is None:
            return web.json_response({"error": "unknown model"}, status=404)
        return web.json_response({"model": runtime.name, "unloaded": runtime.unload()})


# --- error answers in each API's own format


def _bad_request(api: Api, message: str) -> web.Response:
    if api == "openai":
        return web.json_response(wire.openai_error(message, "invalid_request_error"), status=400)
    return web.json_response({"error": message}, status=400)


def _model_not_found(api: Api, model: str) -> web.Response:
    if api == "openai":
        body = wire.openai_error(
            f"The model `{model}` does not exist.",
            "invalid_request_error",
            code="model_not_found",
            param="model",
        )
        return web.json_response(body, status=404)
    return web.json_response(
        {"error": f'model "{model}" not found, try pulling it first'}, status=404
    )


def _internal_error(api: Api) -> web.Response:
    message = "simulated internal server error"
    if api == "openai":
        return web.json_response(wire.openai_error(message, "server_error"), status=500)
    return web.json_response({"error": message}, status=500)


def _queue_full(api: Api, status: int) -> web.Response:
    headers = {"Retry-After": "1"} if status == 429 else None
    if api == "ollama":
        body: dict[str, Any] = {"error": wire.OLLAMA_QUEUE_FULL}
    elif status == 429:
        body = wire.openai_error(
            "Too many requests queued for this model", "rate_limit_error", "rate_limit_exceeded"
        )
    else:
        body = wire.openai_error("Server busy: too many requests queued", "server_error")
    return web.json_response(body, status=status, headers=headers)


def _abort(request: web.Request) -> None:
    """Cut the connection without finishing the response (a crashed worker)."""
    if request.transport is not None:
        request.transport.abort()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


async def serve_simulator(
    profile: SimulatorProfile,
    host: str = "127.0.0.1",
    port: int = 0,
    time_scale: float = 1.0,
) -> None:
    """Run the simulator until cancelled, announcing its address on stdout."""
    simulator = Simulator(profile, time_scale=time_scale)
    bound = await simulator.start(host, port)
    try:
        models = ", ".join(m.name for m in profile.models)
        print(
            f"simulator listening on http://{_url_host(host)}:{bound} (models: {models})",
            flush=True,
        )
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
