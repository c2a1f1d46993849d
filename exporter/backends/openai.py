"""The OpenAI-compatible API: /v1/chat/completions and /v1/completions, SSE or not.

Spoken by vLLM, llama.cpp's server, TGI, LM Studio and Ollama's /v1.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from exporter.backends.base import (
    HTTP_5XX,
    INVALID_RESPONSE,
    TRUNCATED,
    Answer,
    AnswerError,
    Backend,
    HttpRequest,
    json_object,
    require,
)


class OpenAIBackend(Backend):
    api = "openai"

    def build(self, *, max_tokens: int | None = None, stream: bool | None = None) -> HttpRequest:
        s = self.settings
        streaming = s.stream if stream is None else stream
        body: dict[str, Any] = {
            "model": self.model.id,
            "max_tokens": max_tokens or s.max_tokens,
            "stream": streaming,
        }
        if s.endpoint == "completions":
            path = "/v1/completions"
            body["prompt"] = s.prompt
        else:
            path = "/v1/chat/completions"
            body["messages"] = [{"role": "user", "content": s.prompt}]
        if streaming:
            # Ask for the server's own token count in the last chunk (OpenAI, vLLM, llama.cpp).
            body["stream_options"] = {"include_usage": True}
        return HttpRequest(self.endpoint_url(path), body)

    async def read_answer(self, response: aiohttp.ClientResponse, stream: bool) -> Answer:
        ctype = response.headers.get("Content-Type", "")
        if stream and "text/event-stream" in ctype:
            return await self._read_stream(response)
        return _parse_completion(await response.read())

    async def _read_stream(self, response: aiohttp.ClientResponse) -> Answer:
        answer = Answer()
        finished = False
        chunks = 0
        usage_tokens: int | None = None
        async for raw in response.content:
            line = raw.strip()
            if not line or line.startswith(b":") or not line.startswith(b"data:"):
                continue  # blank separators, comments, `event:`/`id:` fields
            data = line[5:].strip()
            if data == b"[DONE]":
                break
            chunk = json_object(data)
            if "error" in chunk:
                raise AnswerError(HTTP_5XX, f"error event in stream: {_brief(chunk['error'])}")
            usage = chunk.get("usage")
            if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
                usage_tokens = usage["completion_tokens"]
            choices = chunk.get("choices")
            if not isinstance(choices, list):
                raise AnswerError(INVALID_RESPONSE, f"chunk without choices: {_brief(chunk)}")
            for choice in choices:
                require(isinstance(choice, dict), "choice is not an object")
                if _choice_text(choice):
                    chunks += 1
                    if answer.first_token_at is None:
                        answer.first_token_at = time.perf_counter()
                if choice.get("finish_reason"):
                    finished = True
        if not finished:
            raise AnswerError(
                TRUNCATED, f"stream ended without a finish_reason after {chunks} chunks"
            )
        answer.output_tokens = usage_tokens if usage_tokens is not None else chunks
        return answer


def _parse_completion(raw: bytes) -> Answer:
    doc = json_object(raw)
    if "error" in doc and "choices" not in doc:
        raise AnswerError(HTTP_5XX, f"error body with status 200: {_brief(doc['error'])}")
    choices = doc.get("choices")
    if not isinstance(choices, list) or not choices:
        raise AnswerError(INVALID_RESPONSE, "no choices in the answer")
    choice = choices[0]
    require(isinstance(choice, dict), "choice is not an object")
    message = choice.get("message")
    text = message.get("content") if isinstance(message, dict) else choice.get("text")
    require(isinstance(text, str), "the answer has no text")
    if not choice.get("finish_reason"):
        raise AnswerError(TRUNCATED, "answer without a finish_reason")
    usage = doc.get("usage")
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return Answer(output_tokens=tokens if isinstance(tokens, int) else None)


def _choice_text(choice: dict[str, Any]) -> str:
    delta = choice.get("delta")
    if isinstance(delta, dict):
        content = delta.get("content")
        return content if isinstance(content, str) else ""
    text = choice.get("text")
    return text if isinstance(text, str) else ""


def _brief(value: object) -> str:
    return json.dumps(value)[:120]
