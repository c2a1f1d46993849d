"""Ollama's native API: /api/chat and /api/generate, NDJSON streaming, /api/ps."""

from __future__ import annotations

import time
from typing import Any

import aiohttp

from exporter.backends.base import (
    HTTP_5XX,
    TRUNCATED,
    Answer,
    AnswerError,
    Backend,
    HttpRequest,
    json_object,
)

_NS = 1e-9


class OllamaBackend(Backend):
    api = "ollama"
    listing_path = "/api/tags"

    def build(self, *, max_tokens: int | None = None, stream: bool | None = None) -> HttpRequest:
        s = self.settings
        body: dict[str, Any] = {
            "model": self.model.id,
            "stream": s.stream if stream is None else stream,
            "options": {"num_predict": max_tokens or s.max_tokens},
        }
        if s.endpoint == "generate":
            path = "/api/generate"
            body["prompt"] = s.prompt
        else:
            path = "/api/chat"
            body["messages"] = [{"role": "user", "content": s.prompt}]
        return HttpRequest(self.endpoint_url(path), body)

    async def read_answer(self, response: aiohttp.ClientResponse, stream: bool) -> Answer:
        answer = Answer()
        chunks = 0
        final: dict[str, Any] | None = None
        async for raw in response.content:
            line = raw.strip()
            if not line:
                continue
            obj = json_object(line)
            if "error" in obj:
                raise AnswerError(HTTP_5XX, f"error in answer: {str(obj['error'])[:120]}")
            if _text(obj):
                chunks += 1
                # Without streaming the first token arrives with the last: no TTFT.
                if stream and answer.first_token_at is None:
                    answer.first_token_at = time.perf_counter()
            if obj.get("done") is True:
                final = obj
                break
        if final is None:
            raise AnswerError(TRUNCATED, f"answer ended without done:true after {chunks} chunks")
        eval_count = final.get("eval_count")
        answer.output_tokens = eval_count if isinstance(eval_count, int) else chunks
        load = final.get("load_duration")
        if isinstance(load, int | float):
            answer.load_duration_s = load * _NS
        return answer


async def loaded_models(session: aiohttp.ClientSession, base_url: str) -> list[dict[str, Any]]:
    """The models Ollama has in memory now (/api/ps)."""
    async with session.get(base_url + "/api/ps") as response:
        response.raise_for_status()
        doc = await response.json(content_type=None)
    models = doc.get("models") if isinstance(doc, dict) else None
    return [m for m in models or [] if isinstance(m, dict)]


def _text(obj: dict[str, Any]) -> str:
    message = obj.get("message")
    if isinstance(message, dict):
        content = message.get("content")
        return content if isinstance(content, str) else ""
    response = obj.get("response")
    return response if isinstance(response, str) else ""
