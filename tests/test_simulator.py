"""The simulated model server, probed like a user would: a real server on 127.0.0.1, a real client.

Timing assertions are lower bounds or orderings only (never "faster than"), so a
slow CI machine cannot make them fail.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import pytest

from exporter.simulator import (
    FaultProfile,
    ModelProfile,
    ProfileError,
    Simulator,
    SimulatorProfile,
    builtin_profile,
    load_profile,
    profile_from_dict,
    serve_simulator,
)
from tests.conftest import SimFactory

CHAT = [{"role": "user", "content": "Say something."}]


def one_model(**model: Any) -> dict[str, Any]:
    """A profile with one fast model "m"; keyword arguments override its fields."""
    return {"server_name": "sim", "models": [{"name": "m", "service_time": "30ms", **model}]}


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def stats(http: aiohttp.ClientSession, sim: Simulator, model: str = "m") -> dict[str, Any]:
    async with http.get(sim.url + "/-/sim/stats") as response:
        doc = await response.json()
    entry: dict[str, Any] = doc["models"][model]
    return entry


async def wait_for(
    http: aiohttp.ClientSession, sim: Simulator, check: Callable[[dict[str, Any]], bool]
) -> dict[str, Any]:
    """Poll the stats until ``check`` holds (fails after a generous 5 s)."""
    deadline = time.monotonic() + 5.0
    while True:
        current = await stats(http, sim)
        if check(current):
            return current
        assert time.monotonic() < deadline, f"stats never matched: {current}"
        await asyncio.sleep(0.005)


async def post(
    http: aiohttp.ClientSession, sim: Simulator, path: str, body: dict[str, Any]
) -> tuple[int, bytes, aiohttp.ClientResponse]:
    async with http.post(sim.url + path, json=body) as response:
        return response.status, await response.read(), response


def sse_events(raw: bytes) -> list[str]:
    text = raw.decode()
    assert text.endswith("\n\n")
    events = [block for block in text.split("\n\n") if block]
    assert all(event.startswith("data: ") for event in events), events
    return [event.removeprefix("data: ") for event in events]


def ndjson(raw: bytes) -> list[dict[str, Any]]:
    return [json.loads(line) for line in raw.decode().splitlines() if line]


# --- listings


async def test_models_are_listed_by_both_apis(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(
        {"models": [{"name": "a", "resident_mb": 1}, {"name": "b", "service_time": 0}]}
    )
    async with http.get(sim.url + "/v1/models") as response:
        doc = await response.json()
    assert doc["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"]) for m in doc["data"]] == [
        ("a", "model", "simulator"),
        ("b", "model", "simulator"),
    ]
    async with http.get(sim.url + "/api/tags") as response:
        tags = await response.json()
    # Ollama lists names with their tag
    assert [(m["name"], m["model"]) for m in tags["models"]] == [
        ("a:latest", "a:latest"),
        ("b:latest", "b:latest"),
    ]
    assert tags["models"][0]["size"] == 2**20
    async with http.get(sim.url + "/health") as response:
        assert await response.json() == {"status": "ok"}


# --- well-formed answers


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_openai_non_stream_answer(
    simulator: SimFactory, http: aiohttp.ClientSession, path: str
) -> None:
    sim = await simulator(one_model())
    chat = path.endswith("chat/completions")
    body: dict[str, Any] = {"model": "m", "max_tokens": 5}
    body |= {"messages": CHAT} if chat else {"prompt": "Say something."}
    status, raw, response = await post(http, sim, path, body)
    assert status == 200 and response.content_type == "application/json"
    doc = json.loads(raw)
    assert doc["object"] == ("chat.completion" if chat else "text_completion")
    choice = doc["choices"][0]
    text = choice["message"]["content"] if chat else choice["text"]
    assert len(text.split()) == 5
    assert choice["finish_reason"] == "length"
    usage = doc["usage"]
    assert usage["completion_tokens"] == 5
    assert usage["total_tokens"] == usage["prompt_tokens"] + 5


async def test_openai_without_max_tokens_gives_16_tokens_and_stops(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model())
    _, raw, _ = await post(http, sim, "/v1/chat/completions", {"model": "m", "messages": CHAT})
    doc = json.loads(raw)
    assert doc["usage"]["completion_tokens"] == 16
    assert doc["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
async def test_openai_stream(simulator: SimFactory, http: aiohttp.ClientSession, path: str) -> None:
    sim = await simulator(one_model(service_time="60ms"))
    chat = path.endswith("chat/completions")
    body: dict[str, Any] = {
        "model": "m",
        "max_tokens": 8,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body |= {"messages": CHAT} if chat else {"prompt": "Say something."}
    status, raw, response = await post(http, sim, path, body)
    assert status == 200 and response.content_type == "text/event-stream"
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk" if chat else "text_completion"}
    usage_chunk, finish_chunk, content = chunks[-1], chunks[-2], chunks[:-2]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 8
    assert finish_chunk["choices"][0]["finish_reason"] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in content)
    texts = [
        c["choices"][0]["delta"]["content"] if chat else c["choices"][0]["text"] for c in content
    ]
    assert len("".join(texts).split()) == 8
    assert len(content) == 8  # 60 ms is room for one token per chunk
    if chat:
        assert content[0]["choices"][0]["delta"]["role"] == "assistant"


async def test_stream_packs_tokens_when_the_service_time_is_short(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model(service_time="20ms"))
    body = {"model": "m", "messages": CHAT, "max_tokens": 100, "stream": True}
    _, raw, _ = await post(http, sim, "/v1/chat/completions", body)
    content = [json.loads(e) for e in sse_events(raw)[:-2]]
    # at most one chunk per 5 ms: 4 chunks carry the 100 tokens
    assert len(content) == 4
    assert len("".join(c["choices"][0]["delta"]["content"] for c in content).split()) == 100


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_ollama_streams_by_default(
    simulator: SimFactory, http: aiohttp.ClientSession, path: str
) -> None:
    sim = await simulator(one_model())
    chat = path == "/api/chat"
    body: dict[str, Any] = {"model": "m", "options": {"num_predict": 6}}
    body |= {"messages": CHAT} if chat else {"prompt": "Say something."}
    status, raw, response = await post(http, sim, path, body)
    assert status == 200 and response.content_type == "application/x-ndjson"
    objects = ndjson(raw)
    *pieces, final = objects
    assert all(piece["done"] is False for piece in pieces)
    text = "".join(p["message"]["content"] if chat else p["response"] for p in pieces)
    assert len(text.split()) == 6
    assert final["done"] is True and final["done_reason"] == "length"
    assert final["eval_count"] == 6 and final["prompt_eval_count"] >= 1
    assert final["model"] == "m"
    for field in ("total_duration", "load_duration", "eval_duration", "prompt_eval_duration"):
        assert isinstance(final[field], int)
    assert final["eval_duration"] + final["prompt_eval_duration"] == pytest.approx(30e6, rel=0.01)


@pytest.mark.parametrize("path", ["/api/chat", "/api/generate"])
async def test_ollama_non_stream(
    simulator: SimFactory, http: aiohttp.ClientSession, path: str
) -> None:
    sim = await simulator(one_model())
    chat = path == "/api/chat"
    body: dict[str, Any] = {"model": "m:latest", "stream": False, "options": {"num_predict": 4}}
    body |= {"messages": CHAT} if chat else {"prompt": "Say something."}
    status, raw, _ = await post(http, sim, path, body)
    assert status == 200
    doc = json.loads(raw)
    assert doc["done"] is True and doc["eval_count"] == 4
    text = doc["message"]["content"] if chat else doc["response"]
    assert len(text.split()) == 4


async def test_ollama_request_without_prompt_only_loads(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model())
    status, raw, _ = await post(http, sim, "/api/generate", {"model": "m"})
    assert status == 200
    assert json.loads(raw)["done_reason"] == "load"
    assert (await stats(http, sim))["loaded"] is True


async def test_unknown_model_and_bad_bodies(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model())
    status, raw, _ = await post(http, sim, "/v1/chat/completions", {"model": "x", "messages": CHAT})
    assert status == 404
    error = json.loads(raw)["error"]
    assert error["type"] == "invalid_request_error" and "`x`" in error["message"]
    status, raw, _ = await post(http, sim, "/api/chat", {"model": "x", "messages": CHAT})
    assert status == 404 and "not found" in json.loads(raw)["error"]
    async with http.post(sim.url + "/v1/chat/completions", data=b"{nope") as response:
        assert response.status == 400
        assert (await response.json())["error"]["type"] == "invalid_request_error"
    status, _, _ = await post(
        http, sim, "/v1/chat/completions", {"model": "m", "messages": CHAT, "max_tokens": 0}
    )
    assert status == 400
    async with http.post(sim.url + "/api/generate", data=b"[") as response:
        assert response.status == 400 and "error" in await response.json()


# --- queueing


async def test_parallel_1_serves_in_fifo_order(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    service = 0.08
    sim = await simulator(one_model(parallel=1, service_time=f"{service}s"))
    done: list[tuple[int, float]] = []
    t0 = time.perf_counter()

    async def ask(index: int) -> None:
        await post(http, sim, "/v1/completions", {"model": "m", "prompt": str(index)})
        done.append((index, time.perf_counter() - t0))

    tasks = [asyncio.create_task(ask(0))]
    await wait_for(http, sim, lambda s: s["active"] == 1)
    # make the arrival order certain before sending the next one
    tasks.append(asyncio.create_task(ask(1)))
    await wait_for(http, sim, lambda s: s["queued"] == 1)
    tasks.append(asyncio.create_task(ask(2)))
    await wait_for(http, sim, lambda s: s["queued"] == 2)
    await asyncio.gather(*tasks)
    assert [index for index, _ in done] == [0, 1, 2]
    for (_, earlier), (_, later) in itertools.pairwise(done):
        assert later - earlier >= service * 0.9
    assert done[-1][1] >= 3 * service * 0.95
    final = await stats(http, sim)
    assert (final["peak_active"], final["served"], final["queued"]) == (1, 3, 0)


async def test_parallel_2_serves_two_at_once(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model(parallel=2, service_time="100ms"))
    body = {"model": "m", "prompt": "x"}
    ends: list[float] = []
    t0 = time.perf_counter()

    async def ask() -> None:
        await post(http, sim, "/v1/completions", body)
        ends.append(time.perf_counter() - t0)

    await asyncio.gather(*(ask() for _ in range(4)))
    current = await stats(http, sim)
    assert (current["peak_active"], current["peak_queued"]) == (2, 2)
    ends.sort()
    assert ends[2] >= 0.19  # the second pair waited for the first one
    assert current["served"] == 4 and current["active"] == 0


async def test_cancelled_queued_request_leaves_the_queue(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model(parallel=1, service_time="150ms"))
    body = {"model": "m", "prompt": "x"}
    first = asyncio.create_task(post(http, sim, "/v1/completions", body))
    await wait_for(http, sim, lambda s: s["active"] == 1)
    with pytest.raises(TimeoutError):
        async with http.post(
            sim.url + "/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=0.05)
        ) as response:
            await response.read()
    await wait_for(http, sim, lambda s: s["queued"] == 0 and s["cancelled"] == 1)
    status, _, _ = await post(http, sim, "/v1/completions", body)
    assert status == 200 and (await first)[0] == 200
    assert (await stats(http, sim))["served"] == 2


# --- faults


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_error_ratio_answers_500(
    simulator: SimFactory, http: aiohttp.ClientSession, path: str
) -> None:
    sim = await simulator(one_model(faults={"error_ratio": 1.0}))
    status, raw, _ = await post(http, sim, path, {"model": "m", "messages": CHAT})
    assert status == 500 and "error" in json.loads(raw)
    assert (await stats(http, sim))["errors"] == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [("/api/chat", 503), ("/v1/chat/completions", 503), ("/v1/chat/completions", 429)],
)
async def test_full_queue_is_rejected_at_once(
    simulator: SimFactory, http: aiohttp.ClientSession, path: str, status: int
) -> None:
    sim = await simulator(
        one_model(service_time="200ms", faults={"queue_limit": 1, "queue_full_status": status})
    )
    body = {"model": "m", "messages": CHAT, "stream": False}
    in_service = asyncio.create_task(post(http, sim, path, body))
    await wait_for(http, sim, lambda s: s["active"] == 1)
    queued = asyncio.create_task(post(http, sim, path, body))
    await wait_for(http, sim, lambda s: s["queued"] == 1)
    got, raw, _ = await post(http, sim, path, body)
    assert got == status
    error = json.loads(raw)["error"]
    if path == "/api/chat":
        assert error == "server busy, please try again.  maximum pending requests exceeded"
    else:
        assert isinstance(error["message"], str)
    assert [(await in_service)[0], (await queued)[0]] == [200, 200]
    assert (await stats(http, sim))["rejected"] == 1


async def test_hang_holds_until_the_client_gives_up(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model(per_request_mb=1, faults={"hang_ratio": 1.0}))
    with pytest.raises(TimeoutError):
        async with http.post(
            sim.url + "/v1/completions",
            json={"model": "m", "prompt": "x"},
            timeout=aiohttp.ClientTimeout(total=0.2),
        ) as response:
            await response.read()
    # the client left: its slot and memory are released
    current = await wait_for(http, sim, lambda s: s["active"] == 0)
    assert (current["hung"], current["cancelled"], current["allocated_mb"]) == (1, 1, 0)


async def test_stop_ends_hung_requests(simulator: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await simulator(one_model(per_request_mb=1, faults={"hang_ratio": 1.0}))
    hung = asyncio.create_task(post(http, sim, "/v1/completions", {"model": "m", "prompt": "x"}))
    await wait_for(http, sim, lambda s: s["hung"] == 1)
    await sim.stop()
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await hung


async def test_truncated_streams(simulator: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await simulator(one_model(faults={"truncate_ratio": 1.0}))
    body = {"model": "m", "messages": CHAT, "stream": True, "max_tokens": 6}
    _, raw, _ = await post(http, sim, "/v1/chat/completions", body)
    events = sse_events(raw)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks and all(c["choices"][0]["finish_reason"] is None for c in chunks)
    _, raw, _ = await post(http, sim, "/api/chat", body)
    objects = ndjson(raw)
    assert objects and all(o["done"] is False for o in objects)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_truncated_non_stream_answer_is_unfinished(
    simulator: SimFactory, http: aiohttp.ClientSession, path: str
) -> None:
    sim = await simulator(one_model(faults={"truncate_ratio": 1.0}))
    body = {"model": "m", "messages": CHAT, "stream": False, "max_tokens": 6}
    body |= {"options": {"num_predict": 6}}
    status, raw, _ = await post(http, sim, path, body)
    doc = json.loads(raw)  # well-formed, but cut short
    assert status == 200
    if path == "/api/chat":
        assert doc["done"] is False and len(doc["message"]["content"].split()) == 3
    else:
        assert doc["choices"][0]["finish_reason"] is None
        assert doc["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat"])
async def test_malformed_body_is_not_json(
    simulator: SimFactory, http: aiohttp.ClientSession, path: str, stream: bool
) -> None:
    sim = await simulator(one_model(faults={"malformed_ratio": 1.0}))
    status, raw, _ = await post(http, sim, path, {"model": "m", "messages": CHAT, "stream": stream})
    assert status == 200
    lines = [line.removeprefix(b"data: ") for line in raw.splitlines() if line]
    payloads = [line for line in lines if line != b"[DONE]"]
    assert payloads
    for payload in payloads:
        with pytest.raises(ValueError):
            json.loads(payload)


@pytest.mark.parametrize("stream", [True, False])
async def test_drop_cuts_the_answer(
    simulator: SimFactory, http: aiohttp.ClientSession, stream: bool
) -> None:
    sim = await simulator(one_model(faults={"drop_ratio": 1.0}))
    body = {"model": "m", "messages": CHAT, "stream": stream}
    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError)):
        await post(http, sim, "/v1/chat/completions", body)
    assert (await wait_for(http, sim, lambda s: s["active"] == 0))["dropped"] == 1


async def test_close_after_stream_closes_a_keep_alive_connection(simulator: SimFactory) -> None:
    sim = await simulator(one_model(faults={"close_after_stream": True}))
    body = json.dumps({"model": "m", "messages": CHAT, "stream": True}).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: sim\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
        assert "connection: keep-alive\r\n" in head
        assert "keep-alive: timeout=5, max=100\r\n" in head
        # read() returns only at EOF: the server closed the connection it called keep-alive
        rest = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    assert b"data: [DONE]" in rest and rest.endswith(b"0\r\n\r\n")


async def test_close_after_stream_breaks_a_reused_pooled_connection(simulator: SimFactory) -> None:
    """What an aiohttp client sees when it reuses the connection right away."""
    sim = await simulator(one_model(service_time="5ms", faults={"close_after_stream": True}))
    body = {"model": "m", "messages": CHAT, "stream": True}
    failures = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(5):
            try:
                async with session.post(sim.url + "/v1/chat/completions", json=body) as response:
                    await response.read()
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                failures += 1
    assert failures >= 1


async def test_runtime_faults_endpoint(simulator: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await simulator(one_model())
    body = {"model": "m", "prompt": "x"}
    faults_url = sim.url + "/-/sim/models/m/faults"
    async with http.post(faults_url, json={"error_ratio": 1}) as response:
        assert response.status == 200
        assert (await response.json())["faults"]["error_ratio"] == 1.0
    assert (await post(http, sim, "/v1/completions", body))[0] == 500
    async with http.post(faults_url, json={"error_ratio": 0}) as response:
        assert response.status == 200
    assert (await post(http, sim, "/v1/completions", body))[0] == 200
    for bad, message in [
        ({"bogus": 1}, "faults.bogus: unknown field"),
        ({"error_ratio": 2}, "faults.error_ratio: must be a number between 0 and 1"),
        ({"queue_full_status": 500}, "faults.queue_full_status: must be 503 or 429"),
    ]:
        async with http.post(faults_url, json=bad) as response:
            assert response.status == 400
            assert (await response.json())["error"].startswith(message)
    async with http.post(faults_url, data=b"{") as response:
        assert response.status == 400
    async with http.post(sim.url + "/-/sim/models/nope/faults", json={}) as response:
        assert response.status == 404


# --- loading and memory


async def test_lazy_load_and_idle_unload(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model(load_delay="200ms", idle_unload="300ms", resident_mb=2))
    async with http.get(sim.url + "/api/ps") as response:
        assert (await response.json())["models"] == []
    body = {"model": "m", "messages": CHAT, "stream": False}
    latencies = []
    answers = []
    for _ in range(2):
        started = time.perf_counter()
        _, raw, _ = await post(http, sim, "/api/chat", body)
        latencies.append(time.perf_counter() - started)
        answers.append(json.loads(raw))
    assert latencies[0] >= 0.2 + 0.03
    assert latencies[1] < latencies[0]
    assert answers[0]["load_duration"] == pytest.approx(0.2e9, rel=0.01)
    assert answers[1]["load_duration"] < 0.01e9
    async with http.get(sim.url + "/api/ps") as response:
        (loaded,) = (await response.json())["models"]
    assert loaded["name"] == "m:latest" and loaded["size_vram"] == 0
    assert loaded["size"] == 2 * 2**20 and loaded["expires_at"].endswith("Z")
    assert (await stats(http, sim))["allocated_mb"] == 2
    # idle for longer than idle_unload: unloaded, memory freed, next request loads again
    current = await wait_for(http, sim, lambda s: not s["loaded"])
    assert (current["allocated_mb"], current["loads"], current["unloads"]) == (0, 1, 1)
    await post(http, sim, "/api/chat", body)
    assert (await stats(http, sim))["loads"] == 2


async def test_unload_endpoint(simulator: SimFactory, http: aiohttp.ClientSession) -> None:
    sim = await simulator(one_model(resident_mb=1))
    await post(http, sim, "/v1/completions", {"model": "m", "prompt": "x"})
    async with http.post(sim.url + "/-/sim/models/m/unload") as response:
        assert await response.json() == {"model": "m", "unloaded": True}
    current = await stats(http, sim)
    assert (current["loaded"], current["allocated_mb"]) == (False, 0)


async def test_per_request_memory_is_really_allocated_and_freed(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model(service_time="300ms", per_request_mb=64))
    process = psutil.Process()
    before = process.memory_info().rss
    request = asyncio.create_task(post(http, sim, "/v1/completions", {"model": "m", "prompt": "x"}))
    await wait_for(http, sim, lambda s: s["allocated_mb"] == 64)
    assert process.memory_info().rss - before >= 48 * 2**20  # the pages are resident
    await request
    assert (await stats(http, sim))["allocated_mb"] == 0


async def test_memory_cap_is_never_exceeded(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(
        {
            "memory_cap_mb": 10,
            "models": [
                {
                    "name": "m",
                    "parallel": 3,
                    "service_time": "200ms",
                    "resident_mb": 6,
                    "per_request_mb": 3,
                }
            ],
        }
    )
    body = {"model": "m", "prompt": "x"}
    requests = [asyncio.create_task(post(http, sim, "/v1/completions", body)) for _ in range(3)]
    current = await wait_for(http, sim, lambda s: s["active"] == 3 and s["allocated_mb"] > 6)
    # 6 resident + 3 for the first request + the 1 left for the second; nothing for the third
    assert current["allocated_mb"] == 10
    async with http.get(sim.url + "/-/sim/stats") as response:
        assert (await response.json())["allocated_mb"] == 10
    assert [(await r)[0] for r in requests] == [200, 200, 200]


async def test_time_scale_divides_every_duration(
    simulator: SimFactory, http: aiohttp.ClientSession
) -> None:
    sim = await simulator(one_model(service_time="1s", load_delay="2s"), time_scale=0.1)
    started = time.perf_counter()
    _, raw, _ = await post(
        http, sim, "/api/generate", {"model": "m", "prompt": "x", "stream": False}
    )
    assert time.perf_counter() - started >= 0.3 * 0.95
    doc = json.loads(raw)
    # the server's own accounting: 0.1 s of service, 0.2 s of loading
    assert doc["eval_duration"] + doc["prompt_eval_duration"] == pytest.approx(0.1e9, rel=0.01)
    assert doc["load_duration"] == pytest.approx(0.2e9, rel=0.01)


# --- fidelity: the seed report


async def closed_loop_level(
    http: aiohttp.ClientSession, url: str, model: str, users: int, scale: float
) -> int:
    """The seed's method: send, wait, sleep 3 s, send again only while now - t0 < 25 s."""
    duration, interval = 25 * scale, 3 * scale
    t0 = time.perf_counter()
    count = 0

    async def user() -> None:
        nonlocal count
        while True:
            async with http.post(
                url + "/v1/chat/completions", json={"model": model, "messages": CHAT}
            ) as response:
                await response.read()
            count += 1
            await asyncio.sleep(interval)
            if time.perf_counter() - t0 >= duration:
                return

    await asyncio.gather(*(user() for _ in range(users)))
    return count


@pytest.mark.slow
async def test_seed_profile_reproduces_the_seed_report() -> None:
    scale = 0.2
    sim = Simulator(builtin_profile("seed"), time_scale=scale)
    await sim.start()
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def warm_up() -> None:  # open the connections before t0
                async with http.get(sim.url + "/health") as response:
                    await response.read()

            await asyncio.gather(*(warm_up() for _ in range(12)))
            # Levels where the queue never empties, so client overhead cannot add up
            # (the one-user levels would be sensitive to it once time-scaled). Both
            # models at once: they have separate queues.
            phi4, qwen = await asyncio.gather(
                closed_loop_level(http, sim.url, "phi4_fast", 4, scale),
                closed_loop_level(http, sim.url, "qwen_coder", 8, scale),
            )
    finally:
        await sim.stop()
    assert (phi4, qwen) == (17, 31)


# --- profiles


def test_builtin_seed_profile() -> None:
    seed = builtin_profile("seed")
    assert seed == SimulatorProfile(
        server_name="multi_model_server",
        models=(
            ModelProfile(name="phi4_fast", parallel=1, service_time=1.58),
            ModelProfile(name="qwen_coder", parallel=1, service_time=0.95),
        ),
        memory_cap_mb=512,
    )
    assert seed.models[0].faults == FaultProfile()
    with pytest.raises(ProfileError, match="unknown built-in profile 'nope' \\(available: seed\\)"):
        builtin_profile("nope")


def test_full_profile_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        """
server_name: lab
memory_cap_mb: 64
models:
  - name: m
    parallel: 2
    service_time: 250ms
    token_time: 0.01
    output_tokens: 32
    load_delay: 2s
    idle_unload: 1m
    resident_mb: 8
    per_request_mb: 0.5
    faults:
      error_ratio: 0.1
      queue_limit: 0
      queue_full_status: 429
      close_after_stream: true
      seed: 42
"""
    )
    profile = load_profile(path)
    (model,) = profile.models
    assert (profile.server_name, profile.memory_cap_mb) == ("lab", 64)
    assert model == ModelProfile(
        name="m",
        parallel=2,
        service_time=0.25,
        token_time=0.01,
        output_tokens=32,
        load_delay=2.0,
        idle_unload=60.0,
        resident_mb=8,
        per_request_mb=0.5,
        faults=FaultProfile(
            error_ratio=0.1, queue_limit=0, queue_full_status=429, close_after_stream=True, seed=42
        ),
    )


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            {"models": [{"name": "m", "colour": "red"}]},
            "models[0].colour: unknown field (known: name, parallel, service_time, token_time, "
            "output_tokens, load_delay, idle_unload, resident_mb, per_request_mb, faults)",
        ),
        (
            {"models": [{"name": "m", "service_time": "1.5x"}]},
            "models[0].service_time: '1.5x' is not a duration (use 25s, 1.5m, ...)",
        ),
        ({"models": [{"name": "m", "parallel": 0}]}, "models[0].parallel: must be an integer >= 1"),
        (
            {"models": [{"name": "m", "parallel": True}]},
            "models[0].parallel: must be an integer >= 1",
        ),
        ({"models": [{"name": "m"}, {"parallel": 2}]}, "models[1].name: is required"),
        (
            {"models": [{"name": "m"}, {"name": "m"}]},
            "models[1].name: duplicate model name 'm'",
        ),
        (
            {"models": [{"name": "m", "faults": {"hang": 1}}]},
            "models[0].faults.hang: unknown field (known: error_ratio, queue_limit, "
            "queue_full_status, hang_ratio, truncate_ratio, malformed_ratio, drop_ratio, "
            "close_after_stream, seed)",
        ),
        (
            {"models": [{"name": "m", "faults": {"drop_ratio": -0.1}}]},
            "models[0].faults.drop_ratio: must be a number between 0 and 1",
        ),
        (
            {"models": [{"name": "m", "faults": {"queue_limit": -1}}]},
            "models[0].faults.queue_limit: must be an integer >= 0",
        ),
        ({"servers": []}, "servers: unknown field (known: server_name, memory_cap_mb, models)"),
        ({"models": []}, "models: must be a list of at least one model"),
        ({"models": [{"name": "m"}], "memory_cap_mb": "lots"}, "memory_cap_mb: must be a number"),
        ([1, 2], "profile: must be a mapping"),
    ],
)
def test_profile_errors_name_the_field(doc: object, message: str) -> None:
    with pytest.raises(ProfileError) as caught:
        profile_from_dict(doc)
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_unreadable_and_invalid_yaml_files(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="cannot read profile"):
        load_profile(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("models:\n  - name: m\n    parallel: [1\n")
    with pytest.raises(ProfileError, match=r"broken\.yaml: invalid YAML at line \d+") as caught:
        load_profile(broken)
    assert "\n" not in str(caught.value)


# --- the process-level entry point


async def test_serve_simulator_announces_and_stops(capsys: pytest.CaptureFixture[str]) -> None:
    profile = profile_from_dict({"models": [{"name": "a"}, {"name": "b"}]})
    task = asyncio.create_task(serve_simulator(profile, "127.0.0.1", 0, 1.0))
    deadline = time.monotonic() + 5
    line = ""
    while not line:
        assert time.monotonic() < deadline and not task.done()
        await asyncio.sleep(0.01)
        line = capsys.readouterr().out
    assert line.startswith("simulator listening on http://127.0.0.1:")
    assert line.endswith(" (models: a, b)\n")
    url = line.split()[3]
    async with aiohttp.ClientSession() as http, http.get(url + "/health") as response:
        assert response.status == 200
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectorError):
            await http.get(url + "/health")
