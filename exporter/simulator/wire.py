"""Wire formats of the simulated APIs: request parsing and response bodies.

Shapes follow the real servers closely (OpenAI chat/text completions with SSE
chunks as vLLM / llama.cpp send them, Ollama's /api/chat and /api/generate with
NDJSON), so a client that works against the simulator works against them.
Nothing here does I/O or keeps state.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

Api = Literal["openai", "ollama"]
Kind = Literal["chat", "completion"]

DEFAULT_OUTPUT_TOKENS = 16
# A sanity bound: a typo like max_tokens: 1e12 must not build a huge answer.
MAX_OUTPUT_TOKENS = 100_000
OLLAMA_QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"
GARBAGE = "<html><body>simulated garbage: this is not a completion</body></html>"
_WORDS = (
    "lorem", "ipsum", "dolor", "sit", "amet", "consectetur", "adipiscing", "elit",
    "sed", "do", "eiusmod", "tempor", "incididunt", "ut", "labore", "et",
)  # fmt: skip


class BadRequest(Exception):
    """A request body the API would refuse with 400."""


@dataclass(frozen=True)
class Ask:
    """What a generation request asks for, whatever API it came through."""

    api: Api
    kind: Kind
    model: str
    stream: bool
    max_tokens: int | None
    include_usage: bool
    prompt_tokens: int
    load_only: bool = False  # Ollama: no prompt/messages means "just load the model"


@dataclass(frozen=True)
class Answer:
    """The answer being produced: its identity, size, and timing on the loop clock."""

    id: str
    created: int
    tokens: int
    finish_reason: str | None  # None: the answer was cut short (truncate fault)
    arrival: float
    service_start: float
    load_s: float
    deadline: float

    @property
    def service_s(self) -> float:
        return self.deadline - self.service_start


def output_tokens(configured: int | None, max_tokens: int | None) -> tuple[int, str]:
    """Tokens to produce and the finish reason ("length" when max_tokens cut it)."""
    limit = max_tokens if max_tokens is not None else DEFAULT_OUTPUT_TOKENS
    tokens = limit if configured is None else min(configured, limit)
    finish = "length" if max_tokens is not None and tokens >= max_tokens else "stop"
    return tokens, finish


def token_text(start: int, stop: int) -> str:
    """Text of tokens ``start`` to ``stop`` (exclusive) of an answer; one word per token."""
    return "".join(
        (" " if index else "") + _WORDS[index % len(_WORDS)] for index in range(start, stop)
    )


def estimate_tokens(text: str) -> int:
    # ~4 characters per token, the usual rule of thumb for English BPE vocabularies
    return max(1, (len(text) + 3) // 4)


def ollama_name(name: str) -> str:
    """How Ollama lists a model: with its tag (``:latest`` when none was given)."""
    return name if ":" in name else f"{name}:latest"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def dumps(payload: object) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# --- request parsing


def _positive_int(value: object, field: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadRequest(f"'{field}' must be a positive integer")
    return min(value, MAX_OUTPUT_TOKENS)


def _message_text(messages: object, *, required: bool) -> str:
    if messages is None and not required:
        return ""
    if not isinstance(messages, list) or (required and not messages):
        raise BadRequest("'messages' must be a non-empty list")
    parts: list[str] = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise BadRequest("each message must be an object")
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):  # OpenAI content parts: [{"type": "text", "text": ...}]
            parts.extend(str(part.get("text", "")) for part in content if isinstance(part, Mapping))
    return "\n".join(parts)


def _stream_flag(value: object, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest("'stream' must be a boolean")
    return value


def _model(body: Mapping[str, Any], missing: str) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest(missing)
    return model


def parse_openai(body: object, kind: Kind) -> Ask:
    if not isinstance(body, Mapping):
        raise BadRequest("request body must be a JSON object")
    model = _model(body, "'model' is required")
    if kind == "chat":
        text = _message_text(body.get("messages"), required=True)
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and all(isinstance(item, str) for item in prompt):
            text = "".join(prompt)
        elif isinstance(prompt, str):
            text = prompt
        else:
            raise BadRequest("'prompt' must be a string or a list of strings")
    stream = _stream_flag(body.get("stream"), default=False)
    # newer OpenAI clients send max_completion_tokens instead of max_tokens
    max_tokens = _positive_int(body.get("max_completion_tokens"), "max_completion_tokens")
    if max_tokens is None:
        max_tokens = _positive_int(body.get("max_tokens"), "max_tokens")
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, Mapping) and options.get("include_usage") is True
    return Ask("openai", kind, model, stream, max_tokens, include_usage, estimate_tokens(text))


def parse_ollama(body: object, kind: Kind) -> Ask:
    if not isinstance(body, Mapping):
        raise BadRequest("request body must be a JSON object")
    model = _model(body, "model is required")
    if kind == "chat":
        text = _message_text(body.get("messages"), required=False)
        load_only = not body.get("messages")
    else:
        prompt = body.get("prompt", "")
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string")
        text, load_only = prompt, not prompt
    stream = _stream_flag(body.get("stream"), default=True)  # Ollama streams unless told not to
    options = body.get("options") or {}
    if not isinstance(options, Mapping):
        raise BadRequest("'options' must be an object")
    num_predict = options.get("num_predict")
    if isinstance(num_predict, int) and not isinstance(num_predict, bool) and num_predict <= 0:
        num_predict = None  # -1 / -2 mean "no limit" in Ollama
    max_tokens = _positive_int(num_predict, "num_predict")
    return Ask("ollama", kind, model, stream, max_tokens, False, estimate_tokens(text), load_only)


# --- OpenAI bodies


def openai_error(
    message: str, kind: str, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _usage(ask: Ask, answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": ask.prompt_tokens,
        "completion_tokens": answer.tokens,
        "total_tokens": ask.prompt_tokens + answer.tokens,
    }


def openai_completion(ask: Ask, answer: Answer) -> dict[str, Any]:
    """The non-streamed answer: a chat.completion or a text_completion."""
    text = token_text(0, answer.tokens)
    choice: dict[str, Any]
    if ask.kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}}
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": text}
        obj = "text_completion"
    choice |= {"logprobs": None, "finish_reason": answer.finish_reason}
    return {
        "id": answer.id,
        "object": obj,
        "created": answer.created,
        "model": ask.model,
        "system_fingerprint": "simulator",
        "choices": [choice],
        "usage": _usage(ask, answer),
    }


def _openai_chunk(ask: Ask, answer: Answer, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": answer.id,
        "object": "chat.completion.chunk" if ask.kind == "chat" else "text_completion",
        "created": answer.created,
        "model": ask.model,
        "system_fingerprint": "simulator",
        "choices": choices,
    }


def _sse(payload: object) -> bytes:
    return b"data: " + dumps(payload) + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def openai_delta(ask: Ask, answer: Answer, text: str, first: bool) -> bytes:
    """One SSE event carrying ``text``; the first one also carries the assistant role."""
    if ask.kind == "chat":
        delta: dict[str, Any] = (
            {"role": "assistant", "content": text} if first else {"content": text}
        )
        choice: dict[str, Any] = {"index": 0, "delta": delta}
    else:
        choice = {"index": 0, "text": text}
    choice |= {"logprobs": None, "finish_reason": None}
    return _sse(_openai_chunk(ask, answer, [choice]))


def openai_stream_end(ask: Ask, answer: Answer) -> bytes:
    """Final chunk with finish_reason, the usage chunk if asked for, then [DONE]."""
    if ask.kind == "chat":
        choice: dict[str, Any] = {"index": 0, "delta": {}}
    else:
        choice = {"index": 0, "text": ""}
    choice |= {"logprobs": None, "finish_reason": answer.finish_reason}
    tail = _sse(_openai_chunk(ask, answer, [choice]))
    if ask.include_usage:
        tail += _sse(_openai_chunk(ask, answer, []) | {"usage": _usage(ask, answer)})
    return tail + SSE_DONE


# --- Ollama bodies


def _ns(seconds: float) -> int:
    return max(0, round(seconds * 1e9))


def ollama_piece(ask: Ask, text: str) -> dict[str, Any]:
    """A streamed Ollama object (done:false) carrying ``text``."""
    body: dict[str, Any] = {"model": ask.model, "created_at": now_rfc3339()}
    if ask.kind == "chat":
        body["message"] = {"role": "assistant", "content": text}
    else:
        body["response"] = text
    return body | {"done": False}


def ollama_final(ask: Ask, answer: Answer, now: float, text: str = "") -> dict[str, Any]:
    """The done:true object: the whole answer when not streaming, empty text when streaming."""
    body = ollama_piece(ask, text)
    # A request that did not load the model still spends a little time in the loader.
    load_s = answer.load_s if answer.load_s > 0 else 0.0001
    prompt_eval_s = min(0.001, answer.service_s / 10)
    body |= {
        "done": True,
        "done_reason": answer.finish_reason,
        "total_duration": _ns(now - answer.arrival),
        "load_duration": _ns(load_s),
        "prompt_eval_count": ask.prompt_tokens,
        "prompt_eval_duration": _ns(prompt_eval_s),
        "eval_count": answer.tokens,
        "eval_duration": _ns(answer.service_s - prompt_eval_s),
    }
    return body


def ollama_loaded(ask: Ask) -> dict[str, Any]:
    """Ollama's answer to a request with no prompt: the model is now loaded."""
    return ollama_piece(ask, "") | {"done": True, "done_reason": "load"}


def ndjson(payload: object) -> bytes:
    return dumps(payload) + b"\n"
