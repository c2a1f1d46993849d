"""Simulator profiles: what each simulated model does (slots, timing, memory, faults).

Profiles come from YAML (a file, or a built-in such as ``seed``) and are decoded
strictly: an unknown key or a bad value raises ``ProfileError`` with a one-line
message that starts with the field path, e.g. ``models[0].parallel: must be an
integer >= 1``. Durations are in seconds once loaded.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml

from exporter.durations import parse_duration

DEFAULT_SERVER_NAME = "multi_model_server"
DEFAULT_MEMORY_CAP_MB = 512.0
DEFAULT_SERVICE_TIME_S = 1.0
QUEUE_FULL_STATUSES = (503, 429)

_BUILTIN_PACKAGE = "exporter.simulator"
_BUILTIN_DIR = "profiles"
_BUILTIN_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*$")

T = TypeVar("T")


class ProfileError(ValueError):
    """A simulator profile that cannot be used; the message names the field path."""


@dataclass(frozen=True)
class FaultProfile:
    """Injected misbehaviour of one model; ratios are shares of requests (0..1)."""

    error_ratio: float = 0.0
    queue_limit: int | None = None
    queue_full_status: int = 503
    hang_ratio: float = 0.0
    truncate_ratio: float = 0.0
    malformed_ratio: float = 0.0
    drop_ratio: float = 0.0
    close_after_stream: bool = False
    seed: int = 0


@dataclass(frozen=True)
class ModelProfile:
    """One simulated model. Durations are seconds before ``time_scale`` is applied."""

    name: str
    parallel: int = 1
    service_time: float = DEFAULT_SERVICE_TIME_S
    token_time: float = 0.0
    output_tokens: int | None = None
    load_delay: float = 0.0
    idle_unload: float | None = None
    resident_mb: float = 0.0
    per_request_mb: float = 0.0
    faults: FaultProfile = field(default_factory=FaultProfile)


@dataclass(frozen=True)
class SimulatorProfile:
    """A whole simulated server: its name, its models, and the memory it may allocate."""

    server_name: str = DEFAULT_SERVER_NAME
    models: tuple[ModelProfile, ...] = ()
    memory_cap_mb: float = DEFAULT_MEMORY_CAP_MB

    def model(self, name: str) -> ModelProfile | None:
        """The model called ``name``, or None."""
        return next((m for m in self.models if m.name == name), None)


# --- field validators: each takes the raw value and the field path, returns the clean value


def _integer(minimum: int) -> Callable[[object, str], int]:
    def check(value: object, path: str) -> int:
        # bool is an int subclass; `parallel: true` is a typo, not 1
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ProfileError(f"{path}: must be an integer >= {minimum}")
        return value

    return check


def _any_integer(value: object, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError(f"{path}: must be an integer")
    return value


def _ratio(value: object, path: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not 0.0 <= float(value) <= 1.0
    ):
        raise ProfileError(f"{path}: must be a number between 0 and 1")
    return float(value)


def _megabytes(value: object, path: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ProfileError(f"{path}: must be a number of megabytes >= 0")
    return float(value)


def _duration(value: object, path: str) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ProfileError(f"{path}: {exc}") from None
    if not math.isfinite(seconds):
        raise ProfileError(f"{path}: must be a finite duration")
    return seconds


def _boolean(value: object, path: str) -> bool:
    if not isinstance(value, bool):
        raise ProfileError(f"{path}: must be true or false")
    return value


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ProfileError(f"{path}: must be a non-empty string")
    return value


def _queue_full_status(value: object, path: str) -> int:
    if isinstance(value, bool) or value not in QUEUE_FULL_STATUSES:
        raise ProfileError(f"{path}: must be 503 or 429")
    assert isinstance(value, int)
    return value


def _optional(check: Callable[[object, str], T]) -> Callable[[object, str], T | None]:
    def optional(value: object, path: str) -> T | None:
        return None if value is None else check(value, path)

    return optional


_FAULT_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "error_ratio": _ratio,
    "queue_limit": _optional(_integer(0)),
    "queue_full_status": _queue_full_status,
    "hang_ratio": _ratio,
    "truncate_ratio": _ratio,
    "malformed_ratio": _ratio,
    "drop_ratio": _ratio,
    "close_after_stream": _boolean,
    "seed": _any_integer,
}

_MODEL_FIELDS: dict[str, Callable[[object, str], Any]] = {
    "name": _name,
    "parallel": _integer(1),
    "service_time": _duration,
    "token_time": _duration,
    "output_tokens": _optional(_integer(1)),
    "load_delay": _duration,
    "idle_unload": _optional(_duration),
    "resident_mb": _megabytes,
    "per_request_mb": _megabytes,
    # "faults" is decoded separately: it is a nested mapping
}

_TOP_FIELDS = ("server_name", "memory_cap_mb", "models")


def _mapping(doc: object, path: str) -> Mapping[str, object]:
    if not isinstance(doc, Mapping):
        raise ProfileError(f"{path}: must be a mapping")
    for key in doc:
        if not isinstance(key, str):
            raise ProfileError(f"{path}: keys must be strings, got {key!r}")
    return doc


def _reject_unknown(doc: Mapping[str, object], known: tuple[str, ...], prefix: str) -> None:
    for key in doc:
        if key not in known:
            raise ProfileError(f"{prefix}{key}: unknown field (known: {', '.join(known)})")


def update_faults(base: FaultProfile, doc: object, path: str = "faults") -> FaultProfile:
    """``base`` with the fields in ``doc`` replaced, validated like the YAML."""
    fields = _mapping(doc, path)
    _reject_unknown(fields, tuple(_FAULT_FIELDS), f"{path}.")
    changes = {key: _FAULT_FIELDS[key](value, f"{path}.{key}") for key, value in fields.items()}
    return dataclasses.replace(base, **changes)


def _model_from_dict(doc: object, path: str) -> ModelProfile:
    fields = _mapping(doc, path)
    _reject_unknown(fields, (*_MODEL_FIELDS, "faults"), f"{path}.")
    if "name" not in fields:
        raise ProfileError(f"{path}.name: is required")
    values = {
        key: _MODEL_FIELDS[key](value, f"{path}.{key}")
        for key, value in fields.items()
        if key != "faults"
    }
    faults = fields.get("faults")
    values["faults"] = (
        FaultProfile()
        if faults is None
        else update_faults(FaultProfile(), faults, f"{path}.faults")
    )
    return ModelProfile(**values)


def profile_from_dict(doc: object) -> SimulatorProfile:
    """A validated profile from a decoded YAML/JSON document."""
    fields = _mapping(doc, "profile")
    _reject_unknown(fields, _TOP_FIELDS, "")
    server_name = _name(fields.get("server_name", DEFAULT_SERVER_NAME), "server_name")
    memory_cap_mb = _megabytes(fields.get("memory_cap_mb", DEFAULT_MEMORY_CAP_MB), "memory_cap_mb")
    raw_models = fields.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise ProfileError("models: must be a list of at least one model")
    models: list[ModelProfile] = []
    for index, raw in enumerate(raw_models):
        model = _model_from_dict(raw, f"models[{index}]")
        if any(seen.name == model.name for seen in models):
            raise ProfileError(f"models[{index}].name: duplicate model name {model.name!r}")
        models.append(model)
    return SimulatorProfile(
        server_name=server_name, models=tuple(models), memory_cap_mb=memory_cap_mb
    )


def _from_yaml(text: str, source: str) -> SimulatorProfile:
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise ProfileError(f"{source}: invalid YAML{where}: {problem}") from None
    return profile_from_dict(doc)


def load_profile(path: str | Path) -> SimulatorProfile:
    """The profile in the YAML file at ``path``."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: cannot read profile: not UTF-8 text") from None
    return _from_yaml(text, str(path))


def builtin_profile_names() -> tuple[str, ...]:
    """Names of the profiles shipped with the package (``seed``, ...)."""
    folder = resources.files(_BUILTIN_PACKAGE).joinpath(_BUILTIN_DIR)
    return tuple(
        sorted(
            entry.name.removesuffix(".yaml")
            for entry in folder.iterdir()
            if entry.name.endswith(".yaml")
        )
    )


def builtin_profile(name: str) -> SimulatorProfile:
    """A profile shipped with the package, by name (``seed``)."""
    available = builtin_profile_names()
    if not _BUILTIN_NAME.match(name) or name not in available:
        raise ProfileError(f"unknown built-in profile {name!r} (available: {', '.join(available)})")
    entry = resources.files(_BUILTIN_PACKAGE).joinpath(_BUILTIN_DIR, f"{name}.yaml")
    return _from_yaml(entry.read_text(encoding="utf-8"), f"built-in profile {name!r}")
