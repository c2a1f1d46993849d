"""The configuration file: typed, frozen settings and a strict YAML loader.

Unknown keys are errors, defaults are the seed report's methodology, and every error is
one short line naming the field path (`probe.duration: '25x' is not a duration ...`).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from exporter.durations import parse_duration
from exporter.files import parse_user_yaml, read_user_file
from exporter.results import Plan

DEFAULT_PORT = 8464
# `llamacpp` and `vllm` speak the OpenAI API and also expose their own /metrics.
APIS = ("openai", "ollama", "llamacpp", "vllm")
ENDPOINTS = {
    "openai": ("chat", "completions"),
    "llamacpp": ("chat", "completions"),
    "vllm": ("chat", "completions"),
    "ollama": ("chat", "generate"),
}
DEFAULT_METRICS_PATH = {"llamacpp": "/metrics", "vllm": "/metrics"}
LANGS = ("en", "es")


class ConfigError(ValueError):
    """A config that cannot be used. `str()` is the one-line message shown to the user."""


@dataclass(frozen=True)
class ProbeSettings:
    """How one model is measured. Defaults are the seed report's methodology."""

    levels: tuple[int, ...] = (1, 2, 4, 8, 12, 16, 20)
    duration_s: float = 25.0
    interval_s: float = 3.0
    timeout_s: float = 60.0
    memory_limit: float = 0.90
    max_error_ratio: float = 0.0
    latency_p95_max_s: float | None = None
    stream: bool = True
    max_tokens: int = 128
    prompt: str = "Explain what a hash map is in two sentences."
    endpoint: str = "chat"
    warmup: bool = True
    memory_sample_interval_s: float = 0.25
    # Yield to real traffic: defer a sweep while the server is busy with other users.
    yield_to_traffic: bool = True
    busy_latency_factor: float = 3.0

    def plan(self) -> Plan:
        return Plan(
            levels=self.levels,
            duration_s=self.duration_s,
            interval_s=self.interval_s,
            timeout_s=self.timeout_s,
            memory_limit_ratio=self.memory_limit,
            max_error_ratio=self.max_error_ratio,
            latency_p95_max_s=self.latency_p95_max_s,
            stream=self.stream,
            max_tokens=self.max_tokens,
        )


@dataclass(frozen=True)
class ModelConfig:
    name: str
    id: str
    probe: ProbeSettings


@dataclass(frozen=True)
class ServerConfig:
    name: str
    url: str
    api: str
    models: tuple[ModelConfig, ...]
    api_key_env: str | None = None
    api_key_file: str | None = None
    process_name: str | None = None
    pid_file: str | None = None
    metrics_url: str | None = None
    notes: tuple[str, ...] = ()
    # The secret itself: never printed (repr=False) and never part of any output.
    api_key: str | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class ScheduleConfig:
    sweep: str = "1h"
    heartbeat_s: float = 30.0
    run_on_start: bool = True
    jitter_s: float = 0.0
    defer_retries: int = 3
    defer_delay_s: float = 300.0


@dataclass(frozen=True)
class SnapshotConfig:
    path: str = "reports/snapshot.md"
    lang: str = "en"
    every_s: float = 3600.0
    keep: int = 24


@dataclass(frozen=True)
class WebConfig:
    listen_address: str = f":{DEFAULT_PORT}"


@dataclass(frozen=True)
class Config:
    servers: tuple[ServerConfig, ...]
    probe: ProbeSettings = ProbeSettings()
    schedule: ScheduleConfig = ScheduleConfig()
    snapshot: SnapshotConfig = SnapshotConfig()
    web: WebConfig = WebConfig()
    state_dir: str = "./state"

    def targets(self) -> list[tuple[ServerConfig, ModelConfig]]:
        return [(s, m) for s in self.servers for m in s.models]


# Every key the file may hold, by section ("" is the top level). Anything else is an error.
KEYS: dict[str, set[str]] = {
    "": {"servers", "probe", "schedule", "snapshot", "web", "state_dir"},
    "servers[]": {
        "name", "url", "api", "api_key_env", "api_key_file", "models", "process_name",
        "pid_file", "metrics_url", "notes",
    },
    "servers[].models[]": {"name", "id", "probe"},
    "probe": {
        "levels", "duration", "interval", "timeout", "memory_limit", "max_error_ratio",
        "latency_p95_max", "stream", "max_tokens", "prompt", "endpoint", "warmup",
        "memory_sample_interval", "yield_to_traffic", "busy_latency_factor",
    },
    "schedule": {"sweep", "heartbeat", "run_on_start", "jitter", "defer_retries", "defer_delay"},
    "snapshot": {"path", "lang", "every", "keep"},
    "web": {"listen_address"},
}  # fmt: skip


# --- loading -----------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a config file; ConfigError on any problem."""
    p = Path(path)
    raw = read_user_file(p, str(p), "config file", ConfigError)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text file") from None
    doc = parse_user_yaml(text, str(p), ConfigError)
    try:
        return config_from_dict(doc, base_dir=p.parent)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from None


def config_from_dict(doc: object, *, base_dir: Path = Path(".")) -> Config:
    root = _mapping(doc, "config")
    _only(root, "", KEYS[""])
    probe = _probe(root.get("probe"), "probe", ProbeSettings())
    servers_doc = root.get("servers")
    if servers_doc is None:
        raise ConfigError("servers: required (a list of model servers to probe)")
    if not isinstance(servers_doc, list) or not servers_doc:
        raise ConfigError("servers: must be a non-empty list")
    servers = tuple(_server(s, f"servers[{i}]", probe, base_dir) for i, s in enumerate(servers_doc))
    _unique([s.name for s in servers], "servers", "server name")
    return Config(
        servers=servers,
        probe=probe,
        schedule=_schedule(root.get("schedule")),
        snapshot=_snapshot(root.get("snapshot")),
        web=_web(root.get("web")),
        state_dir=_str(root.get("state_dir", "./state"), "state_dir"),
    )


def adhoc_config(
    url: str, api: str, models: Sequence[str], probe: ProbeSettings, server_name: str = ""
) -> Config:
    """A config for `probe --url ... --model NAME[=ID]`, validated like a file."""
    doc = {
        "servers": [
            {
                "name": server_name or _host_of(url),
                "url": url,
                "api": api,
                "models": [_model_spec(m) for m in models],
            }
        ]
    }
    config = config_from_dict(doc)
    servers = tuple(
        replace(s, models=tuple(replace(m, probe=probe) for m in s.models)) for s in config.servers
    )
    return replace(config, servers=servers, probe=probe)


def _model_spec(spec: str) -> dict[str, str]:
    name, sep, model_id = spec.partition("=")
    return {"name": name, "id": model_id} if sep else {"name": name}


def _host_of(url: str) -> str:
    m = re.match(r"^\w+://([^/]+)", url)
    return m.group(1) if m else url


# --- sections ----------------------------------------------------------------------------


def _probe(doc: object, path: str, base: ProbeSettings) -> ProbeSettings:
    if doc is None:
        return base
    d = _mapping(doc, path)
    _only(d, path, KEYS["probe"])
    changes: dict[str, Any] = {}
    if "levels" in d:
        changes["levels"] = _levels(d["levels"], f"{path}.levels")
    for key in ("duration", "interval", "timeout", "memory_sample_interval"):
        if key in d:
            changes[f"{key}_s"] = _duration(d[key], f"{path}.{key}")
    if "latency_p95_max" in d:
        v = d["latency_p95_max"]
        changes["latency_p95_max_s"] = (
            None if v is None else _duration(v, f"{path}.latency_p95_max")
        )
    if "memory_limit" in d:
        changes["memory_limit"] = _ratio(d["memory_limit"], f"{path}.memory_limit", zero=False)
    if "max_error_ratio" in d:
        changes["max_error_ratio"] = _ratio(d["max_error_ratio"], f"{path}.max_error_ratio")
    if "stream" in d:
        changes["stream"] = _bool(d["stream"], f"{path}.stream")
    if "warmup" in d:
        changes["warmup"] = _bool(d["warmup"], f"{path}.warmup")
    if "yield_to_traffic" in d:
        changes["yield_to_traffic"] = _bool(d["yield_to_traffic"], f"{path}.yield_to_traffic")
    if "busy_latency_factor" in d:
        factor = d["busy_latency_factor"]
        if isinstance(factor, bool) or not isinstance(factor, int | float) or factor <= 1:
            raise ConfigError(f"{path}.busy_latency_factor: {factor!r} must be a number above 1")
        changes["busy_latency_factor"] = float(factor)
    if "max_tokens" in d:
        changes["max_tokens"] = _int(d["max_tokens"], f"{path}.max_tokens", minimum=1)
    if "prompt" in d:
        changes["prompt"] = _str(d["prompt"], f"{path}.prompt")
    if "endpoint" in d:
        changes["endpoint"] = _str(d["endpoint"], f"{path}.endpoint")
    settings = replace(base, **changes)
    for key in ("duration_s", "timeout_s", "memory_sample_interval_s"):
        if getattr(settings, key) <= 0:
            raise ConfigError(f"{path}.{key.removesuffix('_s')}: must be greater than 0")
    return settings


def _server(doc: object, path: str, probe: ProbeSettings, base_dir: Path) -> ServerConfig:
    d = _mapping(doc, path)
    if "api_key" in d:
        raise ConfigError(
            f"{path}.api_key: keys are not accepted in the config file; "
            "use api_key_env or api_key_file"
        )
    _only(d, path, KEYS["servers[]"])
    name = _label(_required(d, "name", path), f"{path}.name")
    url = _str(_required(d, "url", path), f"{path}.url")
    if not re.match(r"^https?://[^/\s]+", url):
        raise ConfigError(f"{path}.url: {url!r} is not an http:// or https:// URL")
    api = _choice(d.get("api", "openai"), f"{path}.api", APIS)
    models_doc = _required(d, "models", path)
    if not isinstance(models_doc, list) or not models_doc:
        raise ConfigError(f"{path}.models: must be a non-empty list")
    models = tuple(_model(m, f"{path}.models[{i}]", probe) for i, m in enumerate(models_doc))
    _unique([m.name for m in models], f"{path}.models", "model name")
    for i, m in enumerate(models):
        if m.probe.endpoint not in ENDPOINTS[api]:
            allowed = " or ".join(ENDPOINTS[api])
            raise ConfigError(
                f"{path}.models[{i}].probe.endpoint: {m.probe.endpoint!r} is not an {api} "
                f"endpoint (use {allowed})"
            )
    key_env = _opt_str(d.get("api_key_env"), f"{path}.api_key_env")
    key_file = _opt_str(d.get("api_key_file"), f"{path}.api_key_file")
    if key_env and key_file:
        raise ConfigError(f"{path}: set api_key_env or api_key_file, not both")
    api_key: str | None = None
    if key_env:
        api_key = os.environ.get(key_env)
        if not api_key:
            raise ConfigError(f"{path}.api_key_env: environment variable {key_env} is not set")
    if key_file:
        key_path = Path(key_file)
        if not key_path.is_absolute():
            key_path = base_dir / key_path
        try:
            api_key = key_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(
                f"{path}.api_key_file: cannot read {key_file} ({exc.strerror})"
            ) from None
        if not api_key:
            raise ConfigError(f"{path}.api_key_file: {key_file} is empty")
    notes_doc = d.get("notes", [])
    if not isinstance(notes_doc, list):
        raise ConfigError(f"{path}.notes: must be a list of strings")
    notes = tuple(_str(n, f"{path}.notes[{i}]") for i, n in enumerate(notes_doc))
    metrics_url = _metrics_url(d, path, api, url.rstrip("/"))
    return ServerConfig(
        name=name,
        url=url.rstrip("/"),
        api=api,
        models=models,
        api_key_env=key_env,
        api_key_file=key_file,
        process_name=_opt_str(d.get("process_name"), f"{path}.process_name"),
        pid_file=_opt_str(d.get("pid_file"), f"{path}.pid_file"),
        metrics_url=metrics_url,
        notes=notes,
        api_key=api_key,
    )


def _metrics_url(d: Mapping[str, Any], path: str, api: str, url: str) -> str | None:
    """The server's own Prometheus metrics: a URL, a path on `url`, or none (false)."""
    value = d.get("metrics_url", DEFAULT_METRICS_PATH.get(api))
    if value is None or value is False:
        return None
    text = _str(value, f"{path}.metrics_url")
    if text.startswith("/"):
        return re.sub(r"/v1$", "", url) + text
    if not re.match(r"^https?://[^/\s]+", text):
        raise ConfigError(f"{path}.metrics_url: {text!r} is neither a URL nor a /path")
    return text


def _model(doc: object, path: str, probe: ProbeSettings) -> ModelConfig:
    if isinstance(doc, str):
        doc = {"name": doc}
    d = _mapping(doc, path)
    _only(d, path, KEYS["servers[].models[]"])
    name = _label(_required(d, "name", path), f"{path}.name")
    model_id = _str(d.get("id", name), f"{path}.id")
    return ModelConfig(name=name, id=model_id, probe=_probe(d.get("probe"), f"{path}.probe", probe))


def _schedule(doc: object) -> ScheduleConfig:
    if doc is None:
        return ScheduleConfig()
    d = _mapping(doc, "schedule")
    _only(d, "schedule", KEYS["schedule"])
    base = ScheduleConfig()
    sweep = base.sweep
    if "sweep" in d:
        sweep = str(d["sweep"]) if isinstance(d["sweep"], int | float) else d["sweep"]
        sweep = _str(sweep, "schedule.sweep")
        validate_sweep_schedule(sweep, "schedule.sweep")
    heartbeat = base.heartbeat_s
    if "heartbeat" in d:
        heartbeat = _duration(d["heartbeat"], "schedule.heartbeat")
        if heartbeat <= 0:
            raise ConfigError("schedule.heartbeat: must be greater than 0")
    return ScheduleConfig(
        sweep=sweep,
        heartbeat_s=heartbeat,
        run_on_start=_bool(d.get("run_on_start", base.run_on_start), "schedule.run_on_start"),
        jitter_s=_duration(d.get("jitter", base.jitter_s), "schedule.jitter"),
        defer_retries=_int(
            d.get("defer_retries", base.defer_retries), "schedule.defer_retries", minimum=0
        ),
        defer_delay_s=_duration(d.get("defer_delay", base.defer_delay_s), "schedule.defer_delay"),
    )


def validate_sweep_schedule(value: str, path: str) -> None:
    """A sweep schedule is an interval ("1h") or a 5-field cron expression."""
    try:
        if parse_duration(value) <= 0:
            raise ConfigError(f"{path}: must be greater than 0")
        return
    except ValueError:
        pass
    if len(value.split()) == 5:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(value)
            return
        except ValueError as exc:
            raise ConfigError(f"{path}: {value!r} is not a valid cron expression ({exc})") from None
    raise ConfigError(
        f"{path}: {value!r} is neither an interval (1h, 30m, ...) "
        "nor a cron expression ('0 */6 * * *')"
    )


def _snapshot(doc: object) -> SnapshotConfig:
    if doc is None:
        return SnapshotConfig()
    d = _mapping(doc, "snapshot")
    _only(d, "snapshot", KEYS["snapshot"])
    base = SnapshotConfig()
    every = _duration(d.get("every", base.every_s), "snapshot.every")
    if every <= 0:
        raise ConfigError("snapshot.every: must be greater than 0")
    return SnapshotConfig(
        path=_str(d.get("path", base.path), "snapshot.path"),
        lang=_choice(d.get("lang", base.lang), "snapshot.lang", LANGS),
        every_s=every,
        keep=_int(d.get("keep", base.keep), "snapshot.keep", minimum=0),
    )


def _web(doc: object) -> WebConfig:
    if doc is None:
        return WebConfig()
    d = _mapping(doc, "web")
    _only(d, "web", KEYS["web"])
    address = _str(d.get("listen_address", WebConfig().listen_address), "web.listen_address")
    try:
        parse_listen_address(address)
    except ValueError as exc:
        raise ConfigError(f"web.listen_address: {exc}") from None
    return WebConfig(listen_address=address)


def parse_listen_address(address: str) -> tuple[str, int]:
    """':8464' -> ('0.0.0.0', 8464); '127.0.0.1:8464'; '[::1]:8464'."""
    m = re.match(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d+)$", address)
    if not m:
        raise ValueError(f"{address!r} is not HOST:PORT (e.g. :{DEFAULT_PORT})")
    port = int(m.group("port"))
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    host = m.group("v6") or m.group("host") or "0.0.0.0"
    return host, port


# --- field validators --------------------------------------------------------------------


def _mapping(doc: object, path: str) -> Mapping[str, Any]:
    if doc is None and path == "config":
        raise ConfigError("the file is empty (expected a mapping with 'servers')")
    if not isinstance(doc, Mapping):
        where = path or "config"
        raise ConfigError(f"{where}: expected a mapping, got {_kind(doc)}")
    return doc


def _only(d: Mapping[str, Any], path: str, allowed: set[str]) -> None:
    for key in d:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}: unknown key{hint}")


def _required(d: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in d or d[key] is None:
        raise ConfigError(f"{path}.{key}: required")
    return d[key]


def _kind(v: object) -> str:
    if v is None:
        return "nothing"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(v), type(v).__name__)


def _str(v: object, path: str) -> str:
    if not isinstance(v, str) or not v.strip():
        raise ConfigError(f"{path}: must be a non-empty string, got {_kind(v)}")
    return v


def _opt_str(v: object, path: str) -> str | None:
    return None if v is None else _str(v, path)


def _label(v: object, path: str) -> str:
    s = _str(v, path)
    if not re.match(r"^[A-Za-z0-9_.:\-]+$", s):
        raise ConfigError(f"{path}: {s!r} may only hold letters, digits and _ . : -")
    return s


def _bool(v: object, path: str) -> bool:
    if not isinstance(v, bool):
        raise ConfigError(f"{path}: must be true or false, got {v!r}")
    return v


def _int(v: object, path: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ConfigError(f"{path}: {v!r} is not an integer")
    if v < minimum:
        raise ConfigError(f"{path}: must be >= {minimum}, got {v}")
    return v


def _duration(v: object, path: str) -> float:
    try:
        return parse_duration(v)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


def _ratio(v: object, path: str, zero: bool = True) -> float:
    if isinstance(v, str) and v.strip().endswith("%"):
        with contextlib.suppress(ValueError):
            v = float(v.strip()[:-1]) / 100
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ConfigError(f"{path}: {v!r} is not a ratio (use 0.9 or '90%')")
    if zero and not 0 <= v <= 1:
        raise ConfigError(f"{path}: {v!r} must be between 0 and 1")
    if not zero and not 0 < v <= 1:
        raise ConfigError(f"{path}: {v!r} must be greater than 0 and at most 1")
    return float(v)


def _choice(v: object, path: str, choices: Sequence[str]) -> str:
    if v not in choices:
        raise ConfigError(f"{path}: {v!r} is not one of {', '.join(choices)}")
    return str(v)


def _levels(v: object, path: str) -> tuple[int, ...]:
    if not isinstance(v, list) or not v:
        raise ConfigError(f"{path}: must be a non-empty list of user counts, e.g. [1, 2, 4]")
    levels = tuple(_int(x, f"{path}[{i}]", minimum=1) for i, x in enumerate(v))
    if list(levels) != sorted(set(levels)):
        raise ConfigError(f"{path}: levels must be strictly increasing, got {list(levels)}")
    return levels


def _unique(names: Sequence[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{path}: duplicate {what} {name!r}")
        seen.add(name)


def parse_levels(text: str) -> tuple[int, ...]:
    """CLI form of levels: '1,2,4'."""
    try:
        items = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--levels: {text!r} is not a comma-separated list of integers") from None
    return _levels(items, "--levels")


def override_probe(base: ProbeSettings, overrides: Mapping[str, object]) -> ProbeSettings:
    """Command-line flags over the config: validated the same way; errors name the flag."""
    doc = dict(overrides)
    if isinstance(doc.get("levels"), str):
        doc["levels"] = list(parse_levels(str(doc["levels"])))
    for key in ("memory_limit", "max_error_ratio"):
        if isinstance(doc.get(key), str):
            with contextlib.suppress(ValueError):
                doc[key] = float(str(doc[key]))
    try:
        return _probe(doc, "cli", base)
    except ConfigError as exc:
        message = str(exc)
        m = re.match(r"^cli\.(\w+)", message)
        if m:
            message = "--" + m.group(1).replace("_", "-") + message[m.end() :]
        raise ConfigError(message) from None
