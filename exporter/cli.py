"""The `llm-probe-exporter` command: wiring only, no measurement logic lives here.

Exit status: 0 when the command did its job (a sweep that found errors still ran),
2 for bad input (config, flags, results file), with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.config import (
    APIS,
    LANGS,
    Config,
    ConfigError,
    ProbeSettings,
    adhoc_config,
    load_config,
    override_probe,
)
from exporter.results import ModelResult, ResultsError, results_from_json, results_to_json

PROG = "llm-probe-exporter"
EXIT_OK = 0
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad command-line input; the message is shown as is."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help(sys.stderr)
        return EXIT_BAD_INPUT
    try:
        result: int = args.handler(args)
        return result
    except (ConfigError, ResultsError, UsageError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="How many users can each model serve at once? Sweeps LLM servers, "
        "exports the answer to Prometheus, writes the report.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("probe", help="run one sweep now and print the report")
    p.add_argument("--config", "--config.file", dest="config", metavar="FILE")
    p.add_argument("--url", help="ad hoc: the model server's base URL")
    p.add_argument("--api", choices=APIS, help="ad hoc: the API kind (default openai)")
    p.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="NAME[=ID]",
        help="ad hoc: a model to sweep (repeatable); with --config: only these models",
    )
    p.add_argument("--server-name", default="", help="ad hoc: the `server` label")
    p.add_argument("--levels", help="comma-separated user counts, e.g. 1,2,4,8")
    p.add_argument("--duration", help="length of each level (25s)")
    p.add_argument("--interval", help="think time between a user's requests (3s)")
    p.add_argument("--timeout", help="per-request timeout (60s)")
    p.add_argument("--memory-limit", help="host memory used ratio that stops the sweep (0.9)")
    p.add_argument("--max-error-ratio", help="allowed share of errors + timeouts (0)")
    p.add_argument("--latency-p95-max", help="optional p95 objective, e.g. 10s")
    p.add_argument("--max-tokens", type=int, help="max_tokens per request (128)")
    p.add_argument("--prompt", help="the prompt sent by every user")
    p.add_argument("--endpoint", help="chat | completions (openai), chat | generate (ollama)")
    stream = p.add_mutually_exclusive_group()
    stream.add_argument("--stream", dest="stream", action="store_true", default=None)
    stream.add_argument("--no-stream", dest="stream", action="store_false")
    p.add_argument("--no-warmup", dest="warmup", action="store_false", default=None)
    p.add_argument("--json", dest="json_path", metavar="PATH", help="write results JSON here")
    p.add_argument("--markdown", metavar="PATH", help="write the markdown report here")
    p.add_argument("--lang", choices=LANGS, default=None, help="report language (en)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    p.set_defaults(handler=cmd_probe)

    p = sub.add_parser("snapshot", help="render the markdown report from a results JSON")
    p.add_argument("--results", required=True, metavar="JSON")
    p.add_argument("--lang", choices=LANGS, default="en")
    p.add_argument("--out", metavar="PATH", help="write here instead of stdout")
    p.add_argument("--note", action="append", default=[], help="a server configuration line")
    p.set_defaults(handler=cmd_snapshot)

    p = sub.add_parser("simulate", help="run the simulated multi-model server")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--profile", default="seed", help="built-in profile (seed)")
    src.add_argument("--config", dest="profile_file", metavar="FILE", help="a profile YAML")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--time-scale", type=float, default=1.0, help="multiply every duration")
    p.set_defaults(handler=cmd_simulate)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("--config", "--config.file", dest="config", metavar="FILE", required=True)
    p.set_defaults(handler=cmd_check_config)
    return parser


# --- probe -------------------------------------------------------------------------------

_OVERRIDE_FLAGS = (
    "duration",
    "interval",
    "timeout",
    "memory_limit",
    "max_error_ratio",
    "latency_p95_max",
    "max_tokens",
    "prompt",
    "endpoint",
    "stream",
    "warmup",
)


def probe_config(args: argparse.Namespace) -> Config:
    """The config a `probe` run uses: a file or ad hoc flags, then flag overrides."""
    overrides: dict[str, Any] = {
        key: getattr(args, key) for key in _OVERRIDE_FLAGS if getattr(args, key) is not None
    }
    if args.levels is not None:
        overrides["levels"] = args.levels
    if args.config:
        if args.url or args.api:
            raise UsageError("use either --config or --url/--api, not both")
        config = load_config(args.config)
        config = _only_models(config, args.model)
    else:
        if not args.url or not args.model:
            raise UsageError("probe needs --config FILE, or --url URL and at least one --model")
        base = override_probe(ProbeSettings(), overrides)
        return adhoc_config(args.url, args.api or "openai", args.model, base, args.server_name)
    servers = tuple(
        replace(
            s,
            models=tuple(replace(m, probe=override_probe(m.probe, overrides)) for m in s.models),
        )
        for s in config.servers
    )
    return replace(config, servers=servers)


def _only_models(config: Config, names: Sequence[str]) -> Config:
    if not names:
        return config
    known = [m.name for _, m in config.targets()]
    for name in names:
        if name not in known:
            raise UsageError(f"--model: {name!r} is not in the config (known: {', '.join(known)})")
    servers = tuple(
        replace(s, models=tuple(m for m in s.models if m.name in names)) for s in config.servers
    )
    return replace(config, servers=tuple(s for s in servers if s.models))


def cmd_probe(args: argparse.Namespace) -> int:
    from exporter.progress import ProgressDisplay
    from exporter.report import render_report
    from exporter.sweep import SweepObserver, run_sweep

    config = probe_config(args)
    lang = args.lang or config.snapshot.lang
    for path in (args.json_path, args.markdown):
        if path and not Path(path).resolve().parent.is_dir():
            raise UsageError(f"{path}: folder does not exist")
    observer: SweepObserver = SweepObserver() if args.quiet else ProgressDisplay()

    async def sweep_all() -> list[ModelResult]:
        return [await run_sweep(s, m, observer) for s, m in config.targets()]

    results = asyncio.run(sweep_all())
    notes = [n for s in config.servers for n in s.notes]
    if args.json_path:
        write_text(args.json_path, json.dumps(results_to_json(results), indent=2) + "\n")
    report = render_report(results, lang=lang, notes=notes)
    if args.markdown:
        write_text(args.markdown, report)
    sys.stdout.write(render_report(results, lang=lang, notes=notes, chart=False))
    sys.stdout.flush()
    return EXIT_OK


# --- snapshot, check-config, simulate ----------------------------------------------------


def cmd_snapshot(args: argparse.Namespace) -> int:
    from exporter.report import render_report

    path = Path(args.results)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read ({exc})") from None
    except ValueError as exc:
        raise UsageError(f"{path}: not JSON ({exc})") from None
    try:
        results = results_from_json(doc)
    except ResultsError as exc:
        raise ResultsError(f"{path}: {exc}") from None
    report = render_report(results, lang=args.lang, notes=args.note)
    if args.out:
        write_text(args.out, report)
    else:
        sys.stdout.write(report)
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    models = len(config.targets())
    print(f"{args.config}: ok ({len(config.servers)} servers, {models} models)")
    return EXIT_OK


def cmd_simulate(args: argparse.Namespace) -> int:
    from exporter.simulator import (
        ProfileError,
        builtin_profile,
        load_profile,
        serve_simulator,
    )

    if args.time_scale <= 0:
        raise UsageError("--time-scale: must be greater than 0")
    try:
        profile = (
            load_profile(args.profile_file) if args.profile_file else builtin_profile(args.profile)
        )
    except ProfileError as exc:
        raise UsageError(str(exc)) from None
    run_until_signalled(serve_simulator(profile, args.host, args.port, args.time_scale))
    return EXIT_OK


def run_until_signalled(coro: Any) -> None:
    """Run a coroutine until it ends or SIGINT/SIGTERM arrives, then cancel it cleanly."""

    async def runner() -> None:
        task = asyncio.ensure_future(coro)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(runner())


def write_text(path: str | Path, text: str) -> None:
    """Write atomically: a temp file beside the target, fsync, rename (never a torn file)."""
    target = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent or Path("."))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
