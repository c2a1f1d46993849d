"""Smoke tests of the real llama.cpp servers with the tiny model, and one sweep on each.

Both servers are built on first use from PyPI's llama-cpp-python (cached outside the repo,
see tests/realservers/build.py); a failed build fails these tests, it never skips them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import gguf
import pytest

from exporter.config import ProbeSettings, adhoc_config
from exporter.sweep import run_sweep
from tests.realservers.servers import LlamaCppPythonServer, LlamaServer, RealServer
from tests.realservers.tiny_model import is_well_formed, write_tiny_model

pytestmark = pytest.mark.realserver

MAX_TOKENS = 16
PROMPT = "Explain what a hash map is in two sentences."
TIMEOUT = aiohttp.ClientTimeout(total=30)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("model") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama_cpp_python(tiny_model: Path) -> Iterator[LlamaCppPythonServer]:
    # Queueing mode: the engine's level 2 must not cut its own streams off.
    with LlamaCppPythonServer(tiny_model, interrupt=False) as server:
        yield server


@pytest.fixture(scope="module")
def llama_server(tiny_model: Path) -> Iterator[LlamaServer]:
    with LlamaServer(tiny_model, parallel=2, metrics=True) as server:
        yield server


@pytest.fixture(params=["llama-cpp-python", "llama-server"])
def server(request: pytest.FixtureRequest) -> RealServer:
    name = "llama_cpp_python" if request.param == "llama-cpp-python" else "llama_server"
    srv: RealServer = request.getfixturevalue(name)
    return srv


def chat_body(model: str, stream: bool, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": max_tokens,
        "stream": stream,
    }
    if stream:
        body["stream_options"] = {"include_usage": True}
    return body


@dataclass
class Streamed:
    status: int
    chunks: list[str]
    finish_reason: str | None
    usage: dict[str, Any] | None
    done: bool


async def stream_chat(url: str, body: dict[str, Any]) -> Streamed:
    """One streamed chat completion, each SSE event parsed (one connection of its own)."""
    chunks: list[str] = []
    finish: str | None = None
    usage: dict[str, Any] | None = None
    done = False
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(url + "/v1/chat/completions", json=body) as resp,
    ):
        async for raw in resp.content:
            line = raw.decode("utf-8").strip()  # strict: invalid UTF-8 fails the test
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                done = True
                continue
            event = json.loads(data)
            usage = event.get("usage") or usage
            for choice in event.get("choices", []):
                content = (choice.get("delta") or {}).get("content")
                if content:
                    chunks.append(content)
                finish = choice.get("finish_reason") or finish
        return Streamed(resp.status, chunks, finish, usage, done)


def test_tiny_model_file(tiny_model: Path) -> None:
    assert tiny_model.stat().st_size < 1_000_000
    reader = gguf.GGUFReader(tiny_model)
    fields = reader.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "llama"
    assert int(fields["llama.block_count"].parts[-1][0]) == 2
    assert int(fields["llama.embedding_length"].parts[-1][0]) == 64
    assert len(fields["tokenizer.ggml.tokens"].data) == 259
    assert "tokenizer.chat_template" in fields
    # The same seed writes the same bytes.
    again = write_tiny_model(tiny_model.with_name("again.gguf"))
    assert again.read_bytes() == tiny_model.read_bytes()


async def test_chat_not_streamed(server: RealServer) -> None:
    body = chat_body(server.model_id, stream=False)
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.post(server.url + "/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200
        doc = await resp.json()
    choice = doc["choices"][0]
    assert doc["usage"]["completion_tokens"] == MAX_TOKENS
    assert choice["finish_reason"] == "length"
    content = choice["message"]["content"]
    assert len(content) == MAX_TOKENS and is_well_formed(content), repr(content)


async def test_chat_streamed(server: RealServer) -> None:
    got = await stream_chat(server.url, chat_body(server.model_id, stream=True))
    assert got.status == 200
    assert len(got.chunks) == MAX_TOKENS, got.chunks
    assert all(len(c) == 1 and is_well_formed(c) for c in got.chunks), got.chunks
    assert got.finish_reason == "length"
    assert got.done
    if got.usage is not None:  # llama-server reports it; llama_cpp.server does not
        assert got.usage["completion_tokens"] == MAX_TOKENS


async def test_llama_server_metrics(llama_server: LlamaServer) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(llama_server.url + "/metrics") as resp,
    ):
        assert resp.status == 200
        text = await resp.text()
    assert "llamacpp:requests_processing" in text


async def test_llama_cpp_python_interrupt_cuts_streams(tiny_model: Path) -> None:
    """With --interrupt_requests True, a new request ends the running stream early:
    `data: [DONE]` but no finish reason (what the exporter counts as `truncated`)."""
    with LlamaCppPythonServer(tiny_model, interrupt=True) as srv:
        long_body = chat_body(srv.model_id, stream=True, max_tokens=1500)
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.post(srv.url + "/v1/chat/completions", json=long_body) as first,
        ):
            assert first.status == 200
            await first.content.readline()  # the stream is running
            second = await stream_chat(srv.url, chat_body(srv.model_id, stream=True))
            rest = (await first.content.read()).decode()
        assert second.finish_reason == "length" and len(second.chunks) == MAX_TOKENS
        events = [ln.removeprefix("data:").strip() for ln in rest.splitlines() if ln.strip()]
        assert events[-1] == "[DONE]"
        parsed = [json.loads(e) for e in events[:-1]]
        finishes = [c.get("finish_reason") for e in parsed for c in e.get("choices", [])]
        assert not any(finishes), finishes
        assert len(parsed) < 1500


async def test_engine_sweep(server: RealServer) -> None:
    probe = ProbeSettings(
        levels=(1, 2), duration_s=2, interval_s=0, timeout_s=30, max_tokens=MAX_TOKENS,
        warmup=False,
    )  # fmt: skip
    config = adhoc_config(server.url, "openai", [server.model_id], probe)
    (srv_config, model_config) = config.targets()[0]
    result = await run_sweep(srv_config, model_config)
    assert [lv.concurrency for lv in result.levels] == [1, 2]
    for lv in result.levels:
        assert lv.requests > 0 and lv.successes == lv.requests, lv
        assert (lv.errors, lv.timeouts) == (0, 0), lv.errors_by_reason
        assert lv.output_tokens == MAX_TOKENS * lv.successes, lv
        assert lv.passed, lv
    assert result.max_safe_concurrency == 2 and not result.limit_reached
