"""The exporter's HTTP endpoints: /metrics, a landing page, health, results, snapshot,
reload. Every handler reads the exporter's current state; none of them measures.
"""

from __future__ import annotations

import html
import json
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client.aiohttp import make_aiohttp_handler

from exporter import __version__
from exporter.results import format_timestamp, results_to_json

if TYPE_CHECKING:
    from exporter.service import Exporter

EXPORTER_KEY: web.AppKey[Exporter] = web.AppKey("exporter")


def build_app(exporter: Exporter) -> web.Application:
    middlewares = []
    if exporter.web_config is not None:
        from exporter.webconfig import security_middleware

        middlewares.append(security_middleware(exporter.web_config))
    app = web.Application(middlewares=middlewares)
    app[EXPORTER_KEY] = exporter
    app.router.add_get("/", landing)
    app.router.add_get("/metrics", make_aiohttp_handler(exporter.metrics.registry))
    app.router.add_get("/-/healthy", healthy)
    app.router.add_get("/-/ready", ready)
    app.router.add_get("/api/v1/results", results)
    app.router.add_get("/snapshot", snapshot)
    app.router.add_post("/-/reload", reload)
    return app


async def healthy(_request: web.Request) -> web.Response:
    return web.Response(text="OK\n")


async def ready(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    if exporter.ready:
        return web.Response(text="Ready\n")
    return web.Response(status=503, text="Not ready\n")


async def results(request: web.Request) -> web.Response:
    doc = results_to_json(request.app[EXPORTER_KEY].current_results())
    return web.json_response(doc, dumps=lambda d: json.dumps(d, indent=2))


async def snapshot(request: web.Request) -> web.Response:
    text = request.app[EXPORTER_KEY].snapshot_text
    return web.Response(text=text, content_type="text/markdown", charset="utf-8")


async def reload(request: web.Request) -> web.Response:
    ok, message = await request.app[EXPORTER_KEY].reload()
    status = 200 if ok else 500
    return web.json_response({"status": "success" if ok else "error", "message": message},
                             status=status)  # fmt: skip


async def landing(request: web.Request) -> web.Response:
    exporter = request.app[EXPORTER_KEY]
    latest = exporter.store.latest
    rows = []
    for t in exporter.targets():
        r = latest.get(t.key)
        if t.server.name in exporter.sweeping:
            state = "sweeping"
        elif r is None:
            state = "waiting for first sweep"
        elif r.limit_reached:
            state = f"limit reached ({r.stop_reason})"
        else:
            state = "no limit reached"
        cells = (
            t.model.name,
            t.server.name,
            format_timestamp(r.finished_at) if r else "-",
            str(r.max_safe_concurrency) if r else "-",
            state,
        )
        rows.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    body = f"""<!doctype html>
<html><head><meta charset="utf-8"><title>llm-probe-exporter</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style>
</head><body>
<h1>llm-probe-exporter</h1>
<p>Version {html.escape(__version__)}. How many users can each model serve at once?</p>
<table><thead><tr><th>model</th><th>server</th><th>last sweep (UTC)</th>
<th>max safe concurrency</th><th>state</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
<ul>
<li><a href="metrics">/metrics</a></li>
<li><a href="api/v1/results">/api/v1/results</a> (results JSON of the last sweeps)</li>
<li><a href="snapshot">/snapshot</a> (the markdown report)</li>
<li><a href="-/healthy">/-/healthy</a>, <a href="-/ready">/-/ready</a></li>
</ul>
</body></html>
"""
    return web.Response(text=body, content_type="text/html")
