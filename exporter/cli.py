"""The `llm-probe-exporter` command: wiring only, no measurement logic lives here.

Exit status: 0 when the command did its job (a sweep that found errors still ran),
2 for bad input (config, flags, results file), with one line on stderr and no traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from exporter import __version__
from exporter.config import (
    APIS,
    DEFAULT_PORT,
    LANGS,
    Config,
    ConfigError,
    ProbeSettings,
    adhoc_config,
    config_from_dict,
    load_config,
    override_probe,
    parse_levels,
    parse_listen_address,
)
from exporter.files import atomic_write
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

    p = sub.add_parser("serve", help="the long-running exporter")
    p.add_argument("--config", "--config.file", dest="config", metavar="FILE", required=True)
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="ADDR",
        help=f"address to serve on (overrides web.listen_address; default :{DEFAULT_PORT})",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        help="TLS and basic auth, in the Prometheus exporter-toolkit format",
    )
    _log_flags(p)
    p.set_defaults(handler=cmd_serve)

    p = sub.add_parser("demo", help="the simulator and the exporter, on an embedded config")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="exporter port (%(default)s)")
    p.add_argument("--sim-port", type=int, default=0, help="simulator port (default: any free)")
    p.add_argument("--time-scale", type=float, default=0.12, help="simulator and plan scale")
    p.add_argument("--levels", default="1,2,4,8,12,16,20", help="levels (%(default)s)")
    p.add_argument("--sweep-every", default="5m", help="time between sweeps (%(default)s)")
    p.add_argument("--dir", default="demo-output", help="snapshot and state folder")
    p.add_argument("--lang", choices=LANGS, default="en")
    _log_flags(p)
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("dashboards", help="regenerate the Grafana dashboards (source checkout)")
    p.add_argument("--out", default=None, metavar="DIR", help="default: the dashboards/ folder")
    p.set_defaults(handler=cmd_dashboards)

    p = sub.add_parser("check-config", help="validate a config file and exit")
    p.add_argument("--config", "--config.file", dest="config", metavar="FILE", required=True)
    p.set_defaults(handler=cmd_check_config)
    return parser


def _log_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--log.level",
        dest="log_level",
        choices=("debug", "info", "warning", "error"),
        default="info",
    )
    p.add_argument("--log.format", dest="log_format", choices=("logfmt", "json"), default="logfmt")


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
        atomic_write(args.json_path, json.dumps(results_to_json(results), indent=2) + "\n")
    report = render_report(results, lang=lang, notes=notes)
    if args.markdown:
        atomic_write(args.markdown, report)
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
        atomic_write(args.out, report)
    else:
        sys.stdout.write(report)
    return EXIT_OK


def cmd_serve(args: argparse.Namespace) -> int:
    from exporter.logs import setup_logging
    from exporter.service import Exporter, serve_forever

    config = load_config(args.config)
    if args.listen_address is not None:
        try:
            parse_listen_address(args.listen_address)
        except ValueError as exc:
            raise UsageError(f"--web.listen-address: {exc}") from None
    web_config = None
    if args.web_config:
        from exporter.webconfig import WebConfigError, load_web_config

        try:
            web_config = load_web_config(args.web_config)
        except WebConfigError as exc:
            raise UsageError(str(exc)) from None
    setup_logging(args.log_level, args.log_format)
    exporter = Exporter(
        config,
        config_path=args.config,
        listen_address=args.listen_address,
        web_config=web_config,
    )
    try:
        asyncio.run(serve_forever(exporter))
    except OSError as exc:  # the port is taken, the state folder is not writable, ...
        raise UsageError(str(exc)) from None
    return EXIT_OK


def demo_config(args: argparse.Namespace, sim_url: str) -> Config:
    """The embedded demo config: the seed's plan, scaled like the simulator."""
    scale = args.time_scale
    out = Path(args.dir)
    doc = {
        "servers": [
            {
                "name": "multi_model_server",
                "url": sim_url,
                "api": "openai",
                "models": ["phi4_fast", "qwen_coder"],
                "notes": [f"Simulated (built-in seed profile, time scale {scale:g})"],
            }
        ],
        "probe": {
            "levels": list(parse_levels(args.levels)),
            "duration": 25 * scale,
            "interval": 3 * scale,
            "timeout": 60 * scale,
        },
        "schedule": {"sweep": args.sweep_every, "heartbeat": "10s", "run_on_start": True},
        "snapshot": {"path": str(out / "snapshot.md"), "lang": args.lang, "every": "1m"},
        "web": {"listen_address": f"127.0.0.1:{args.port}"},
        "state_dir": str(out / "state"),
    }
    return config_from_dict(doc)


def cmd_demo(args: argparse.Namespace) -> int:
    from exporter.logs import setup_logging
    from exporter.service import Exporter, serve_forever
    from exporter.simulator import Simulator, builtin_profile

    if args.time_scale <= 0:
        raise UsageError("--time-scale: must be greater than 0")
    setup_logging(args.log_level, args.log_format)

    async def demo() -> None:
        sim = Simulator(builtin_profile("seed"), time_scale=args.time_scale)
        await sim.start("127.0.0.1", args.sim_port)
        try:
            config = demo_config(args, sim.url)
            exporter = Exporter(config)
            base = f"http://127.0.0.1:{args.port}"
            print(
                f"llm-probe-exporter demo (simulator: seed profile, time scale "
                f"{args.time_scale:g})\n"
                f"  simulator  {sim.url}\n"
                f"  overview   {base}/\n"
                f"  metrics    {base}/metrics\n"
                f"  results    {base}/api/v1/results\n"
                f"  snapshot   {config.snapshot.path} (rewritten after each sweep)\n"
                f"Sweeping now, then every {args.sweep_every}. Ctrl-C stops.",
                flush=True,
            )
            await serve_forever(exporter, reload_on_sighup=False)
        finally:
            await sim.stop()

    try:
        asyncio.run(demo())
    except OSError as exc:
        raise UsageError(str(exc)) from None
    return EXIT_OK


def cmd_dashboards(args: argparse.Namespace) -> int:
    import importlib.util

    folder = Path(__file__).resolve().parents[1] / "dashboards"
    script = folder / "generate.py"
    if not script.exists():
        raise UsageError(f"{script}: not found (dashboards are generated from a source checkout)")
    spec = importlib.util.spec_from_file_location("llm_probe_dashboards", script)
    if spec is None or spec.loader is None:
        raise UsageError(f"{script}: cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for path in module.generate(Path(args.out) if args.out else folder):
        print(path)
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
