"""Backends: one module per API, behind `Backend.execute() -> Outcome`."""

from __future__ import annotations

from exporter.backends.base import (
    ERROR_REASONS,
    Backend,
    HttpClient,
    Outcome,
    new_session,
)
from exporter.backends.ollama import OllamaBackend
from exporter.backends.openai import OpenAIBackend
from exporter.config import ModelConfig, ServerConfig

BACKENDS: dict[str, type[Backend]] = {
    "openai": OpenAIBackend,
    "llamacpp": OpenAIBackend,
    "vllm": OpenAIBackend,
    "ollama": OllamaBackend,
}


def backend_for(server: ServerConfig, model: ModelConfig) -> Backend:
    return BACKENDS[server.api](server, model)


__all__ = [
    "BACKENDS",
    "ERROR_REASONS",
    "Backend",
    "HttpClient",
    "Outcome",
    "backend_for",
    "new_session",
]
