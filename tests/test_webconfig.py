"""`--web.config.file`: real TLS and basic auth on 127.0.0.1, and one-line config errors."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import bcrypt
import pytest
from aiohttp import web

from exporter import webconfig
from exporter.webconfig import (
    REALM,
    BasicAuthenticator,
    WebConfig,
    WebConfigError,
    load_web_config,
    security_middleware,
)

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "web-config.example.yml"
BODY = "llm_probe_up 1\n"
TIMEOUT = aiohttp.ClientTimeout(total=20)
# What a client sees when the server refuses it during or right after the handshake.
REFUSED = (aiohttp.ClientError, ssl.SSLError, ConnectionError)


# --------------------------------------------------------------------------- fixtures


def openssl(*args: str, cwd: Path) -> None:
    assert shutil.which("openssl"), "the openssl command is needed to make test certificates"
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def self_signed(folder: Path, name: str, cn: str, *extra: str) -> None:
    openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN={cn}",
        *extra, "-keyout", f"{name}.key", "-out", f"{name}.crt",
        cwd=folder,
    )  # fmt: skip


def signed_client(folder: Path, name: str, ca: str, sans: str) -> None:
    (folder / f"{name}.ext").write_text(f"subjectAltName={sans}\nextendedKeyUsage=clientAuth\n")
    openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
        "-keyout", f"{name}.key", "-out", f"{name}.csr",
        cwd=folder,
    )  # fmt: skip
    openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        cwd=folder,
    )  # fmt: skip


@dataclass(frozen=True)
class Pki:
    folder: Path

    def __getattr__(self, name: str) -> Path:  # pki.server_crt -> folder/server.crt
        stem, _, ext = name.rpartition("_")
        if name.startswith("_") or not stem:
            raise AttributeError(name)
        return self.folder / f"{stem}.{ext}"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """server.crt/.key for 127.0.0.1, a client CA, a client it signed, and a stranger."""
    folder = tmp_path_factory.mktemp("pki")
    self_signed(folder, "server", "127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    self_signed(folder, "other", "127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1")
    ca_ext = ("-addext", "basicConstraints=critical,CA:TRUE")
    self_signed(folder, "ca", "Test client CA", *ca_ext, "-addext", "keyUsage=keyCertSign")
    signed_client(folder, "client", "ca", "DNS:scraper.example,IP:::1")
    self_signed(folder, "stranger", "stranger", "-addext", "subjectAltName=DNS:scraper.example")
    openssl(
        "genpkey", "-algorithm", "RSA", "-aes256", "-pass", "pass:secret", "-out", "enc.key",
        cwd=folder,
    )  # fmt: skip
    return Pki(folder)


def hash_for(password: str, rounds: int = 4) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds)).decode()


def write(folder: Path, text: str, name: str = "web.yml") -> Path:
    path = folder / name
    path.write_text(text)
    return path


def tls_yaml(pki: Pki, *lines: str) -> str:
    body = "".join(f"  {line}\n" for line in lines)
    return (
        f"tls_server_config:\n  cert_file: {pki.server_crt}\n  key_file: {pki.server_key}\n{body}"
    )


@contextlib.asynccontextmanager
async def serve(config: WebConfig) -> AsyncIterator[int]:
    """A /metrics app behind the middleware, on 127.0.0.1; yields the port."""

    async def metrics(_request: web.Request) -> web.Response:
        return web.Response(text=BODY)

    async def gone(_request: web.Request) -> web.Response:
        raise web.HTTPGone()

    app = web.Application(middlewares=[security_middleware(config)])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/gone", gone)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=config.ssl_context)
        await site.start()
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


def client_tls(pki: Pki, cert: str | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.server_crt))
    if cert is not None:
        ctx.load_cert_chain(pki.folder / f"{cert}.crt", pki.folder / f"{cert}.key")
    return ctx


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def get(
    url: str,
    *,
    ssl_ctx: ssl.SSLContext | bool = True,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, Any]:
    headers = dict(headers or {})
    if auth is not None:
        headers.update(basic(*auth))
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(url, ssl=ssl_ctx, headers=headers) as resp,
    ):
        return resp.status, await resp.text(), resp.headers


# --------------------------------------------------------------------------- TLS + basic auth


async def test_https_with_basic_auth_and_headers(pki: Pki, tmp_path: Path) -> None:
    path = write(
        tmp_path,
        tls_yaml(pki)
        + "http_server_config:\n  http2: true\n  headers:\n"
        + "    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n"
        + "    Strict-Transport-Security: max-age=31536000\n"
        + f"basic_auth_users:\n  alice: {hash_for('s3cret')}\n",
    )
    config = load_web_config(path)
    assert config.ssl_context is not None
    assert set(config.basic_auth_users) == {"alice"}
    security = {
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "Strict-Transport-Security": "max-age=31536000",
    }
    assert dict(config.headers) == security
    tls = client_tls(pki)
    async with serve(config) as port:
        with pytest.raises(aiohttp.ClientError):
            await get(f"http://127.0.0.1:{port}/metrics")

        url = f"https://127.0.0.1:{port}/metrics"
        status, body, headers = await get(url, ssl_ctx=tls)
        assert status == 401
        assert headers["WWW-Authenticate"] == f'Basic realm="{REALM}"'
        assert REALM == "llm-probe-exporter"
        assert BODY not in body
        for name, value in security.items():
            assert headers[name] == value

        for auth in (("alice", "wrong"), ("mallory", "s3cret")):
            status, body, headers = await get(url, ssl_ctx=tls, auth=auth)
            assert status == 401
            assert headers["WWW-Authenticate"] == 'Basic realm="llm-probe-exporter"'
            assert BODY not in body
        for raw in ("Basic !!!", "Basic YWxpY2U=", "Bearer abc", "Basic"):  # YWxpY2U= is "alice"
            status, _, _ = await get(url, ssl_ctx=tls, headers={"Authorization": raw})
            assert status == 401

        good = ("alice", "s3cret")
        for _ in range(2):
            status, body, headers = await get(url, ssl_ctx=tls, auth=good)
            assert (status, body) == (200, BODY)
            for name, value in security.items():
                assert headers[name] == value

        # HTTPExceptions (a handler's and the router's 404) get the headers too.
        for path_, expected in (("/gone", 410), ("/nope", 404)):
            status, _, headers = await get(
                f"https://127.0.0.1:{port}{path_}", ssl_ctx=tls, auth=good
            )
            assert status == expected
            assert headers["X-Frame-Options"] == "deny"


async def test_no_tls_basic_auth_only(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, f"basic_auth_users:\n  bob: {hash_for('pw')}\n"))
    assert config.ssl_context is None
    async with serve(config) as port:
        url = f"http://127.0.0.1:{port}/metrics"
        assert (await get(url))[0] == 401
        status, body, _ = await get(url, auth=("bob", "pw"))
        assert (status, body) == (200, BODY)


async def test_empty_config_is_open(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, "# nothing\n"))
    assert config == WebConfig()
    async with serve(config) as port:
        status, body, headers = await get(f"http://127.0.0.1:{port}/metrics")
    assert (status, body) == (200, BODY)
    assert "WWW-Authenticate" not in headers


async def test_inline_cert_and_key(pki: Pki, tmp_path: Path) -> None:
    def block(pem: str) -> str:
        return "|\n" + "".join(f"    {line}\n" for line in pem.splitlines())

    text = (
        "tls_server_config:\n"
        f"  cert: {block(pki.server_crt.read_text())}"
        f"  key: {block(pki.server_key.read_text())}"
    )
    config = load_web_config(write(tmp_path, text))
    async with serve(config) as port:
        status, body, _ = await get(f"https://127.0.0.1:{port}/metrics", ssl_ctx=client_tls(pki))
    assert (status, body) == (200, BODY)


async def test_tls_versions_and_cipher_suites(pki: Pki, tmp_path: Path) -> None:
    config = load_web_config(
        write(
            tmp_path,
            tls_yaml(
                pki,
                "max_version: TLS12",
                "cipher_suites: [TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, TLS_AES_128_GCM_SHA256]",
                "curve_preferences: [CurveP384]",
            ),
        )
    )
    async with serve(config) as port:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_tls(pki))
        cipher = writer.get_extra_info("cipher")
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
    assert cipher[:2] == ("ECDHE-RSA-AES256-GCM-SHA384", "TLSv1.2")

    config = load_web_config(write(tmp_path, tls_yaml(pki, "min_version: TLS13"), "v13.yml"))
    old_client = client_tls(pki)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2
    async with serve(config) as port:
        with pytest.raises(REFUSED):
            await get(f"https://127.0.0.1:{port}/metrics", ssl_ctx=old_client)
        assert (await get(f"https://127.0.0.1:{port}/metrics", ssl_ctx=client_tls(pki)))[0] == 200


# --------------------------------------------------------------------------- client certificates


async def test_require_and_verify_client_cert(pki: Pki, tmp_path: Path) -> None:
    text = tls_yaml(
        pki, "client_auth_type: RequireAndVerifyClientCert", f"client_ca_file: {pki.ca_crt}"
    )
    config = load_web_config(write(tmp_path, text))
    async with serve(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(REFUSED):
            await get(url, ssl_ctx=client_tls(pki))
        with pytest.raises(REFUSED):
            await get(url, ssl_ctx=client_tls(pki, cert="stranger"))
        status, body, _ = await get(url, ssl_ctx=client_tls(pki, cert="client"))
        assert (status, body) == (200, BODY)


async def test_verify_client_cert_if_given(pki: Pki, tmp_path: Path) -> None:
    text = tls_yaml(
        pki, "client_auth_type: VerifyClientCertIfGiven", f"client_ca_file: {pki.ca_crt}"
    )
    config = load_web_config(write(tmp_path, text))
    async with serve(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        assert (await get(url, ssl_ctx=client_tls(pki)))[0] == 200
        assert (await get(url, ssl_ctx=client_tls(pki, cert="client")))[0] == 200
        with pytest.raises(REFUSED):
            await get(url, ssl_ctx=client_tls(pki, cert="stranger"))


@pytest.mark.parametrize(
    ("sans", "status"),
    [("[scraper.example]", 200), ('["::1"]', 200), ("[other.example, 10.0.0.1]", 403)],
)
async def test_client_allowed_sans(pki: Pki, tmp_path: Path, sans: str, status: int) -> None:
    text = tls_yaml(
        pki,
        "client_auth_type: RequireAndVerifyClientCert",
        f"client_ca_file: {pki.ca_crt}",
        f"client_allowed_sans: {sans}",
    )
    config = load_web_config(write(tmp_path, text))
    async with serve(config) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        got, body, _ = await get(url, ssl_ctx=client_tls(pki, cert="client"))
    assert got == status
    assert (body == BODY) is (status == 200)


# --------------------------------------------------------------------------- paths


def test_relative_paths_resolve_against_the_config_folder(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(pki.server_crt, conf / "server.crt")
    shutil.copy(pki.server_key, conf / "server.key")
    shutil.copy(pki.ca_crt, conf / "ca.crt")
    text = (
        "tls_server_config:\n  cert_file: server.crt\n  key_file: ./server.key\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.crt\n"
    )
    path = write(conf, text)
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert load_web_config(path).ssl_context is not None
    assert load_web_config("../conf/web.yml").ssl_context is not None

    broken = write(
        conf, "tls_server_config:\n  cert_file: gone.crt\n  key_file: server.key\n", "b.yml"
    )
    with pytest.raises(WebConfigError) as err:
        load_web_config("../conf/b.yml")
    gone = Path.cwd() / "../conf/gone.crt"
    assert str(err.value) == f"../conf/b.yml: tls_server_config.cert_file: {gone}: no such file"
    assert broken.exists()


# --------------------------------------------------------------------------- bad files


def load_error(folder: Path, text: str) -> tuple[str, str]:
    path = write(folder, text)
    with pytest.raises(WebConfigError) as err:
        load_web_config(path)
    message = str(err.value)
    assert "\n" not in message
    prefix = f"{path}: "
    assert message.startswith(f"{path}")
    return message.removeprefix(prefix), err.value.field


def test_exact_messages(pki: Pki, tmp_path: Path) -> None:
    crt, key = pki.server_crt, pki.server_key
    cases = {
        "tls_server_confg: {}\n": (
            "tls_server_confg: unknown key (did you mean 'tls_server_config'?)"
        ),
        f"tls_server_config:\n  certfile: {crt}\n": (
            "tls_server_config.certfile: unknown key (did you mean 'cert_file'?)"
        ),
        "http_server_config:\n  compress: true\n": "http_server_config.compress: unknown key",
        f"tls_server_config:\n  cert_file: {crt}\n": (
            "tls_server_config.key_file: required when cert_file is set"
        ),
        f"tls_server_config:\n  key_file: {key}\n": (
            "tls_server_config.cert_file: required when key_file is set"
        ),
        "tls_server_config:\n  min_version: TLS13\n": (
            "tls_server_config.cert_file: required when tls_server_config is set"
        ),
        f"tls_server_config:\n  cert_file: {tmp_path}/missing.crt\n  key_file: {key}\n": (
            f"tls_server_config.cert_file: {tmp_path}/missing.crt: no such file"
        ),
        tls_yaml(pki, "min_version: TLS14"): (
            "tls_server_config.min_version: unknown TLS version 'TLS14' "
            "(expected TLS10, TLS11, TLS12 or TLS13)"
        ),
        tls_yaml(pki, "min_version: TLS13", "max_version: TLS12"): (
            "tls_server_config.min_version: is higher than max_version"
        ),
        tls_yaml(pki, "client_auth_type: RequireClientCertPlease"): (
            "tls_server_config.client_auth_type: unknown value 'RequireClientCertPlease' "
            "(expected one of NoClientCert, RequestClientCert, RequireAnyClientCert, "
            "VerifyClientCertIfGiven, RequireAndVerifyClientCert)"
        ),
        tls_yaml(pki, f"client_ca_file: {pki.ca_crt}"): (
            "tls_server_config.client_ca_file: set but client_auth_type is NoClientCert"
        ),
        "basic_auth_users:\n  alice: hunter2\n": (
            "basic_auth_users.alice: not a bcrypt hash (expected $2a$, $2b$ or $2y$, cost, "
            "53 characters)"
        ),
        "basic_auth_users:\n  alice:\n": (
            "basic_auth_users.alice: expected a bcrypt hash string, got null"
        ),
        "http_server_config:\n  headers:\n    X-Powered-By: me\n": (
            "http_server_config.headers.X-Powered-By: this header cannot be configured (allowed: "
            "Content-Security-Policy, Strict-Transport-Security, X-Content-Type-Options, "
            "X-Frame-Options, X-XSS-Protection)"
        ),
        "http_server_config:\n  headers:\n    X-Frame-Options: allow\n": (
            "http_server_config.headers.X-Frame-Options: 'allow' is not allowed "
            "(expected 'deny' or 'sameorigin')"
        ),
        "http_server_config:\n  http2: maybe\n": (
            "http_server_config.http2: expected true or false, got a string"
        ),
        "rate_limit:\n  interval: 1s\n": (
            "rate_limit.burst: must be at least 1 when interval is set"
        ),
        "rate_limit:\n  interval: 5\n  burst: 1\n": (
            "rate_limit.interval: expected a duration like 1s or 500ms, got a number"
        ),
        "- just\n- a list\n": "top level: expected a mapping, got a list",
    }
    for text, expected in cases.items():
        message, field = load_error(tmp_path, text)
        assert message == expected, text
        assert field == expected.partition(":")[0], text
    # The secret-looking value is never echoed.
    assert "hunter2" not in load_error(tmp_path, "basic_auth_users:\n  alice: hunter2\n")[0]


def test_bad_yaml_and_duplicates(tmp_path: Path) -> None:
    path = write(tmp_path, "tls_server_config:\n  cert_file: [a\n")
    with pytest.raises(WebConfigError) as err:
        load_web_config(path)
    assert str(err.value) == (
        f"{path}: line 3: invalid YAML: expected ',' or ']', but got '<stream end>'"
    )
    assert err.value.field == ""
    path = write(tmp_path, "basic_auth_users: {}\nbasic_auth_users: {}\n")
    with pytest.raises(WebConfigError) as err:
        load_web_config(path)
    assert str(err.value) == f"{path}: line 2: invalid YAML: duplicate key 'basic_auth_users'"
    path = write(tmp_path, "a: b: c\n")
    with pytest.raises(
        WebConfigError, match=r"line 1: invalid YAML: mapping values are not allowed"
    ):
        load_web_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(WebConfigError) as err:
        load_web_config(tmp_path / "nope.yml")
    assert str(err.value) == f"{tmp_path / 'nope.yml'}: no such file"
    assert isinstance(err.value, ValueError)


def test_bad_pem_files(pki: Pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    crt, key = pki.server_crt, pki.server_key

    def tls(cert: Path, key: Path, *more: str) -> str:
        extra = "".join(f"  {m}\n" for m in more)
        return f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n{extra}"

    cases = {
        tls(junk, key): f"tls_server_config.cert_file: no valid PEM certificate in {junk}",
        tls(key, key): f"tls_server_config.cert_file: no valid PEM certificate in {key}",
        tls(crt, junk): f"tls_server_config.key_file: no valid PEM private key in {junk}",
        tls(crt, pki.other_key): (
            f"tls_server_config.key_file: {pki.other_key} does not match the certificate "
            "in cert_file"
        ),
        tls(crt, pki.enc_key): (
            f"tls_server_config.key_file: {pki.enc_key}: encrypted private keys are not supported"
        ),
        tls(crt, tmp_path): f"tls_server_config.key_file: {tmp_path}: is a directory",
        tls(crt, key, "client_auth_type: RequireAndVerifyClientCert", f"client_ca_file: {junk}"): (
            f"tls_server_config.client_ca_file: no valid PEM certificate in {junk}"
        ),
        tls(
            crt, key, f"cert: {junk}"
        ): "tls_server_config.cert: cannot be set together with cert_file",
    }
    for text, expected in cases.items():
        assert load_error(tmp_path, text)[0] == expected, text


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            ["cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]"],
            "tls_server_config.cipher_suites[0]: unknown cipher suite 'TLS_RSA_WITH_RC4_128_SHA' "
            "(use Go's names, e.g. TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
        ),
        (
            ["curve_preferences: [P256]"],
            "tls_server_config.curve_preferences[0]: unknown curve 'P256' "
            "(expected one of CurveP256, CurveP384, CurveP521, X25519)",
        ),
        (
            ["client_allowed_sans: [a.example]"],
            "tls_server_config.client_allowed_sans: needs client_auth_type RequireAnyClientCert "
            "or RequireAndVerifyClientCert",
        ),
        (["prefer_server_cipher_suites: 1"], None),
    ],
)
def test_bad_tls_options(pki: Pki, tmp_path: Path, lines: list[str], expected: str | None) -> None:
    message, _ = load_error(tmp_path, tls_yaml(pki, *lines))
    if expected is not None:
        assert message == expected
    else:
        assert message.startswith("tls_server_config.prefer_server_cipher_suites: ")


def test_all_toolkit_options_accepted(pki: Pki, tmp_path: Path) -> None:
    text = tls_yaml(
        pki,
        "min_version: TLS10",
        "max_version: TLS13",
        "client_auth_type: RequireAnyClientCert",
        f"client_ca: {json.dumps(pki.ca_crt.read_text())}",
        "client_allowed_sans: [scraper.example]",
        "cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, TLS_RSA_WITH_AES_128_CBC_SHA]",
        "prefer_server_cipher_suites: false",
        "curve_preferences: [X25519, CurveP256]",
    ) + (
        "http_server_config:\n  http2: false\n  headers:\n    X-XSS-Protection: '1; mode=block'\n"
        "    Content-Security-Policy: \"default-src 'none'\"\n    X-Frame-Options: ''\n"
        "rate_limit:\n  interval: 1m30s\n  burst: 5\n"
    )
    config = load_web_config(write(tmp_path, text))
    assert config.ssl_context is not None
    assert config.ssl_context.verify_mode == ssl.CERT_REQUIRED
    assert config.ssl_context.minimum_version == ssl.TLSVersion.TLSv1
    assert not config.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    assert config.client_allowed_sans == frozenset({"scraper.example"})
    assert dict(config.headers) == {
        "X-XSS-Protection": "1; mode=block",
        "Content-Security-Policy": "default-src 'none'",
    }
    assert config.rate_limit == webconfig.RateLimit(interval=90.0, burst=5)


# --------------------------------------------------------------------------- the shipped example


def test_example_passes_promtool_and_loads(pki: Pki, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail(
            "promtool not found: install Debian's prometheus package "
            "(apt-get install -y prometheus) to check deploy/web-config.example.yml"
        )
    copy = tmp_path / "web-config.yml"
    shutil.copy(EXAMPLE, copy)
    shutil.copy(pki.server_crt, tmp_path / "llm-probe-exporter.crt")
    shutil.copy(pki.server_key, tmp_path / "llm-probe-exporter.key")
    done = subprocess.run(
        [promtool, "check", "web-config", str(copy)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout + done.stderr

    config = load_web_config(copy)
    assert config.ssl_context is not None
    assert list(config.basic_auth_users) == ["prometheus"]
    assert bcrypt.checkpw(b"changeme", config.basic_auth_users["prometheus"])
    assert config.headers["X-Frame-Options"] == "deny"

    # And promtool agrees with us that a broken copy is broken.
    copy.write_text(EXAMPLE.read_text().replace("min_version: TLS12", "min_version: TLS14"))
    assert subprocess.run(
        [promtool, "check", "web-config", str(copy)], capture_output=True
    ).returncode
    with pytest.raises(WebConfigError, match="min_version: unknown TLS version 'TLS14'"):
        load_web_config(copy)


# --------------------------------------------------------------------------- basic auth internals


class CountingCheckpw:
    """bcrypt.checkpw that records which hashes it was asked about, and from which thread."""

    def __init__(self, real: Callable[[bytes, bytes], bool] = bcrypt.checkpw) -> None:
        self.real = real
        self.hashes: list[bytes] = []
        self.threads: set[int] = set()

    def __call__(self, password: bytes, hashed: bytes) -> bool:
        self.hashes.append(hashed)
        self.threads.add(threading.get_ident())
        return self.real(password, hashed)


async def test_unknown_users_cost_a_bcrypt_of_the_same_cost() -> None:
    alice = hash_for("pw", rounds=5).encode()
    counting = CountingCheckpw()
    auth = BasicAuthenticator({"alice": alice}, checkpw=counting)
    assert auth.dummy_hash[:7] == b"$2b$05$"  # same cost as the real users
    assert bcrypt.checkpw(b"x", auth.dummy_hash) is False

    assert await auth.verify(b"mallory", b"pw") is False
    assert counting.hashes == [auth.dummy_hash]
    assert await auth.verify(b"mallory", b"pw") is False  # failures are not cached
    assert counting.hashes == [auth.dummy_hash] * 2

    assert await auth.verify(b"alice", b"wrong") is False
    assert counting.hashes[-1] == alice
    assert len(counting.hashes) == 3

    # Known and unknown users take exactly one bcrypt each, off the event loop's thread.
    assert threading.get_ident() not in counting.threads


async def test_successes_are_cached() -> None:
    counting = CountingCheckpw()
    auth = BasicAuthenticator({"alice": hash_for("pw").encode()}, checkpw=counting, cache_size=1)
    assert await auth.verify(b"alice", b"pw")
    assert await auth.verify(b"alice", b"pw")
    assert len(counting.hashes) == 1
    assert await auth.verify(b"alice", b"pw2") is False  # another password: a new bcrypt
    assert len(counting.hashes) == 2


async def test_bcrypt_does_not_block_the_event_loop() -> None:
    """checkpw waits for the loop to run another task: it would deadlock on the loop thread."""
    released = threading.Event()

    def slow_checkpw(password: bytes, hashed: bytes) -> bool:
        return released.wait(timeout=10) and bcrypt.checkpw(password, hashed)

    auth = BasicAuthenticator({"alice": hash_for("pw").encode()}, checkpw=slow_checkpw)
    verify = asyncio.create_task(auth.verify(b"alice", b"pw"))
    await asyncio.sleep(0)
    released.set()  # runs only because verify() yielded to the loop
    assert await verify is True


async def test_long_passwords_are_truncated_like_go() -> None:
    password = b"p" * 72
    auth = BasicAuthenticator({"alice": bcrypt.hashpw(password, bcrypt.gensalt(4))})
    assert await auth.verify(b"alice", password + b"ignored by bcrypt")
    assert not await auth.verify(b"alice", password[:-1])


async def test_middleware_counts_one_bcrypt_per_new_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counting = CountingCheckpw()
    monkeypatch.setattr(bcrypt, "checkpw", counting)
    config = load_web_config(write(tmp_path, f"basic_auth_users:\n  alice: {hash_for('pw')}\n"))
    async with serve(config) as port:
        url = f"http://127.0.0.1:{port}/metrics"
        for _ in range(3):
            assert (await get(url, auth=("alice", "pw")))[0] == 200
        assert len(counting.hashes) == 1
        for _ in range(2):
            assert (await get(url, auth=("eve", "pw")))[0] == 401
        assert len(counting.hashes) == 3
        assert counting.hashes[1] == counting.hashes[2] != config.basic_auth_users["alice"]


async def test_rate_limit(tmp_path: Path) -> None:
    config = load_web_config(write(tmp_path, "rate_limit:\n  interval: 1h\n  burst: 2\n"))
    async with serve(config) as port:
        url = f"http://127.0.0.1:{port}/metrics"
        statuses = [(await get(url))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]
