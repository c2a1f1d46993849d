"""`--web.config.file`: TLS, basic auth and response headers for the /metrics server.

The file uses the Prometheus exporter-toolkit format, so one web config can serve
node_exporter, Prometheus and this exporter alike
(https://github.com/prometheus/exporter-toolkit/blob/master/docs/web-configuration.md)::

    tls_server_config:
      cert_file: llm-probe-exporter.crt   # relative paths: against this file's folder
      key_file: llm-probe-exporter.key
      min_version: TLS12                  # TLS10 TLS11 TLS12 (default) TLS13
      max_version: TLS13                  # default TLS13
      client_auth_type: RequireAndVerifyClientCert
      client_ca_file: clients-ca.crt
    http_server_config:
      headers:
        X-Frame-Options: deny
    basic_auth_users:
      prometheus: $2b$10$...              # bcrypt hash ($2a$, $2b$, $2y$)
    rate_limit:
      interval: 1s                        # one request per interval on average
      burst: 10

`load_web_config` reads and checks the whole file and loads every certificate and key
once, at start-up, so a typo, a missing file, a bad PEM or a key that does not match its
certificate stops the exporter with one line naming the field::

    web.yml: tls_server_config.key_file: required when cert_file is set

`security_middleware` returns an aiohttp middleware that applies the rest to every
request, in the toolkit's order: rate limit (429), client certificate SANs (403), basic
auth (401 with ``WWW-Authenticate: Basic realm="llm-probe-exporter"``), then the
handler; the configured headers go on every response this middleware sees, including
the 401/403/429 and the `web.HTTPException` ones (not on a response the handler already
sent with ``prepare()``, nor on the 500 aiohttp makes from an unhandled exception).
Configured headers replace any value the handler set. Serve with
``web.TCPSite(runner, host, port, ssl_context=config.ssl_context)``.

Fields
------
All of the toolkit's fields are known; anything else, anywhere, is an error (with a
"did you mean" hint), and so is a duplicate key. A key given as ``null`` counts as unset.

- ``tls_server_config``: ``cert_file``/``key_file`` (or inline PEM ``cert``/``key``;
  giving both forms of one is an error), ``client_ca_file`` (or inline ``client_ca``),
  ``client_auth_type``, ``client_allowed_sans``, ``min_version``, ``max_version``,
  ``cipher_suites``, ``prefer_server_cipher_suites``, ``curve_preferences``. Any non-null
  field here turns TLS on and then needs both a certificate and a key (the toolkit would
  silently serve plain HTTP for, say, only ``min_version``).
- ``http_server_config.headers``: only the toolkit's set, with its allowed values:
  ``Strict-Transport-Security``, ``Content-Security-Policy``, ``X-XSS-Protection`` (any
  value), ``X-Content-Type-Options`` (``nosniff``), ``X-Frame-Options`` (``deny`` or
  ``sameorigin``). A blank value leaves the header unset.
- ``http_server_config.http2``: accepted (a boolean) and ignored: aiohttp speaks only
  HTTP/1.1 (the TLS context offers ``http/1.1`` by ALPN).
- ``basic_auth_users``: user name -> bcrypt hash (``$2a$``, ``$2b$``, ``$2y$``, cost 4-31).
  When set, every request needs one of them. A user name cannot contain ``:``.
- ``rate_limit``: ``interval`` (a Go duration such as ``500ms``, ``1s``, ``1m30s``; ``0``
  turns it off) and ``burst`` (at least 1): one token bucket for the whole server, as in
  the toolkit; over the limit a request gets 429 before any authentication.

How Python's ``ssl`` differs from Go's ``crypto/tls``
-----------------------------------------------------
- ``client_auth_type``: ``NoClientCert`` and ``RequestClientCert`` do not ask for a
  client certificate (Go's ``RequestClientCert`` asks but never checks or uses it, so
  the access decision is the same). ``VerifyClientCertIfGiven`` is ``CERT_OPTIONAL``.
  ``RequireAndVerifyClientCert`` is ``CERT_REQUIRED``. ``RequireAnyClientCert`` (and its
  old alias ``RequireClientCert``) is also ``CERT_REQUIRED``, which is stricter than Go:
  Python cannot require a certificate without verifying it, so the certificate must
  chain to the client CA. As in Go, a verifying mode without ``client_ca_file`` or
  ``client_ca`` trusts the system's CA store, and a client CA with ``NoClientCert`` is
  an error. Use ``RequireAndVerifyClientCert`` with your own CA for client auth.
- ``client_allowed_sans`` (needs ``RequireAnyClientCert`` or
  ``RequireAndVerifyClientCert``): checked per request against the DNS, IP, e-mail and
  URI SANs of the verified client certificate; a mismatch gets 403 instead of a failed
  handshake.
- ``min_version``/``max_version``: ``TLS10``/``TLS11`` are accepted, but OpenSSL 3 at its
  default security level still refuses to negotiate them. ``min_version`` above
  ``max_version`` is an error.
- ``cipher_suites``: Go's names (the ones ``tls.CipherSuites()`` lists) are mapped to
  OpenSSL's and applied in order for TLS 1.0-1.2. TLS 1.3 names are accepted and
  ignored, as in Go: TLS 1.3 suites cannot be configured. A list with only TLS 1.3
  names leaves OpenSSL's default TLS 1.2 suites.
- ``prefer_server_cipher_suites`` (default true): applied (``OP_CIPHER_SERVER_PREFERENCE``;
  Go itself ignores it since Go 1.17).
- ``curve_preferences``: Python's ``ssl`` can set one group only, so only the first
  (most preferred) curve is used; the connection never uses a curve you did not list,
  but clients without that curve cannot connect.
- The toolkit re-reads the web config on every request and the certificate on every
  connection; here everything is read once at start-up: restart to pick up changes.
- Encrypted private keys are refused (as in the toolkit, which has no password field).

Basic auth
----------
Passwords are checked with ``bcrypt.checkpw`` in a worker thread (`asyncio.to_thread`),
at most `BCRYPT_CONCURRENCY` at a time, so a slow hash never blocks the event loop and a
flood of bad passwords cannot take every thread. Successful checks are cached in memory
(an LRU of `AUTH_CACHE_SIZE` entries keyed by an HMAC-SHA256, under a per-process random
key, of user and password; neither is stored in the clear), so a scrape costs a bcrypt
only the first time. Failures are not cached. An unknown user is checked against a
dummy hash made at start-up with the highest cost among the configured hashes and then
refused, so it takes as long as a known user (give every user the same cost).
Passwords longer than 72 bytes are truncated to 72, as bcrypt in Go does. Nothing
here logs or echoes a password, a hash, or a user name.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import difflib
import hmac
import ipaddress
import os
import re
import secrets
import ssl
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, NoReturn

import bcrypt
import yaml
from aiohttp import hdrs, web
from aiohttp.typedefs import Handler, Middleware

from exporter.files import parse_user_yaml, read_user_file

__all__ = [
    "AUTH_CACHE_SIZE",
    "BCRYPT_CONCURRENCY",
    "REALM",
    "BasicAuthenticator",
    "RateLimit",
    "WebConfig",
    "WebConfigError",
    "load_web_config",
    "security_middleware",
]

REALM = "llm-probe-exporter"
AUTH_CACHE_SIZE = 256
BCRYPT_CONCURRENCY = 2
# bcrypt only uses the first 72 bytes; Go's CompareHashAndPassword ignores the rest,
# Python's bcrypt>=5 raises instead, so truncate to accept what the toolkit accepts.
_BCRYPT_MAX_PASSWORD = 72

_TOP_KEYS = ("tls_server_config", "http_server_config", "basic_auth_users", "rate_limit")
_TLS_KEYS = (
    "cert",
    "key",
    "client_ca",
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_allowed_sans",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
    "curve_preferences",
)
_HTTP_KEYS = ("http2", "headers")
_RATE_KEYS = ("interval", "burst")

_TLS_VERSIONS = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

# client_auth_type -> how Python verifies client certificates; see the module docstring.
_CLIENT_AUTH = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_NONE,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireClientCert": ssl.CERT_REQUIRED,  # the toolkit's backwards-compatible alias
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}
_CLIENT_AUTH_NAMES = (
    "NoClientCert",
    "RequestClientCert",
    "RequireAnyClientCert",
    "VerifyClientCertIfGiven",
    "RequireAndVerifyClientCert",
)
_SAN_CLIENT_AUTH = ("RequireAnyClientCert", "RequireClientCert", "RequireAndVerifyClientCert")

# Go's tls.CipherSuites() names -> OpenSSL names (None: TLS 1.3, not configurable).
_CIPHER_SUITES: dict[str, str | None] = {
    "TLS_RSA_WITH_AES_128_CBC_SHA": "AES128-SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA": "AES256-SHA",
    "TLS_RSA_WITH_AES_128_GCM_SHA256": "AES128-GCM-SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384": "AES256-GCM-SHA384",
    "TLS_AES_128_GCM_SHA256": None,
    "TLS_AES_256_GCM_SHA384": None,
    "TLS_CHACHA20_POLY1305_SHA256": None,
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
}
_CURVES = {
    "CurveP256": "prime256v1",
    "CurveP384": "secp384r1",
    "CurveP521": "secp521r1",
    "X25519": "X25519",
}

# Header -> allowed values (empty: any value), exactly the toolkit's list.
_HEADERS: dict[str, tuple[str, ...]] = {
    "Strict-Transport-Security": (),
    "X-Content-Type-Options": ("nosniff",),
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-XSS-Protection": (),
    "Content-Security-Policy": (),
}

_BCRYPT_HASH = re.compile(rb"\$2[aby]\$(\d\d)\$[./A-Za-z0-9]{53}")
_GO_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_GO_DURATION_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


class WebConfigError(ValueError):
    """A web config that cannot be used; `str()` is one line: ``<file>: <field>: <problem>``.

    `field` is the dotted field path (``tls_server_config.key_file``), or ``""`` when the
    problem is the file itself (unreadable, not YAML).
    """

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(" ".join(message.split()))
        self.field = field


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: `burst` requests at once, refilled by one every `interval` seconds."""

    interval: float
    burst: int


@dataclass(frozen=True)
class WebConfig:
    """A checked web config, ready to serve. `WebConfig()` is "no TLS, no auth, no headers"."""

    ssl_context: ssl.SSLContext | None = None
    basic_auth_users: Mapping[str, bytes] = field(
        default_factory=lambda: MappingProxyType({}), repr=False
    )  # user name -> bcrypt hash
    headers: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    client_allowed_sans: frozenset[str] | None = None
    rate_limit: RateLimit | None = None


class _FieldError(Exception):
    """Raised while checking; `load_web_config` prefixes the file name."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


def _fail(field: str, problem: str) -> NoReturn:
    raise _FieldError(field, problem)


# --------------------------------------------------------------------------- loading


def load_web_config(path: str | Path) -> WebConfig:
    """Read, check and build the web config at `path`; raises `WebConfigError`.

    Certificates, keys and CAs are loaded now, so problems show at start-up.
    """
    label = os.fspath(path)
    p = Path(path)
    raw = read_user_file(p, label, "web config file", WebConfigError)
    doc = parse_user_yaml(raw, label, WebConfigError, _StrictLoader)
    try:
        return _build(doc, p.absolute().parent)
    except _FieldError as exc:
        raise WebConfigError(f"{label}: {exc}", exc.field) from None


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate and unhashable keys (as Go's UnmarshalStrict)."""


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    result: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in result
        except TypeError:  # a list or a mapping as a key
            raise yaml.constructor.ConstructorError(
                None, None, "found an unhashable key", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        result[key] = loader.construct_object(value_node, deep=True)
    return result


_StrictLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _build(doc: object, base_dir: Path) -> WebConfig:
    if doc is None:  # an empty file: the toolkit's defaults, i.e. nothing
        return WebConfig()
    if not isinstance(doc, dict):
        _fail("top level", f"expected a mapping, got {_kind(doc)}")
    root = _present(doc)
    _only(doc, "", _TOP_KEYS)
    tls = _mapping(root.get("tls_server_config"), "tls_server_config")
    _only(tls, "tls_server_config", _TLS_KEYS)
    http = _mapping(root.get("http_server_config"), "http_server_config")
    _only(http, "http_server_config", _HTTP_KEYS)
    http = _present(http)
    _bool(http, "http2", "http_server_config", default=True)  # accepted, ignored
    headers = _headers(http.get("headers"), "http_server_config.headers")
    users = _users(root.get("basic_auth_users"), "basic_auth_users")
    rate_limit = _rate_limit(root.get("rate_limit"), "rate_limit")
    ssl_context, allowed_sans = _tls(tls, "tls_server_config", base_dir)
    return WebConfig(
        ssl_context=ssl_context,
        basic_auth_users=MappingProxyType(users),
        headers=MappingProxyType(headers),
        client_allowed_sans=allowed_sans,
        rate_limit=rate_limit,
    )


def _join(parent: str, key: str) -> str:
    return f"{parent}.{key}" if parent else key


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _mapping(value: object, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        _fail(where, f"expected a mapping, got {_kind(value)}")
    return value


def _present(d: Mapping[Any, Any]) -> dict[Any, Any]:
    """`d` without the keys set to null (or to an empty string): those count as unset."""
    return {k: v for k, v in d.items() if v is not None and v != ""}


def _only(d: Mapping[Any, Any], where: str, allowed: Sequence[str]) -> None:
    for key in d:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            _fail(_join(where, str(key)), f"unknown key{hint}")


def _str(d: Mapping[str, Any], key: str, where: str) -> str | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        _fail(_join(where, key), f"expected a string, got {_kind(value)}")
    return value


def _bool(d: Mapping[str, Any], key: str, where: str, *, default: bool) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        _fail(_join(where, key), f"expected true or false, got {_kind(value)}")
    return value


def _str_list(d: Mapping[str, Any], key: str, where: str) -> list[str] | None:
    value = d.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        _fail(_join(where, key), f"expected a list of strings, got {_kind(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            _fail(f"{_join(where, key)}[{i}]", f"expected a string, got {_kind(item)}")
    return value


def _headers(value: object, where: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, raw in _mapping(value, where).items():
        fname = _join(where, str(name))
        if name not in _HEADERS:
            allowed = ", ".join(sorted(_HEADERS))
            _fail(fname, f"this header cannot be configured (allowed: {allowed})")
        if raw is None:
            continue  # "Unset if blank"
        if isinstance(raw, bool) or not isinstance(raw, str | int):
            _fail(fname, f"expected a string, got {_kind(raw)}")
        text = str(raw)
        if "\r" in text or "\n" in text:
            _fail(fname, "must be one line")
        if not text.strip():
            continue  # "Unset if blank"
        allowed_values = _HEADERS[name]
        if allowed_values and text not in allowed_values:
            expected = " or ".join(repr(v) for v in allowed_values)
            _fail(fname, f"{text!r} is not allowed (expected {expected})")
        headers[name] = text
    return headers


def _users(value: object, where: str) -> dict[str, bytes]:
    users: dict[str, bytes] = {}
    for name, hashed in _mapping(value, where).items():
        if isinstance(name, bool) or not isinstance(name, str | int):
            _fail(where, f"user names must be strings, got {_kind(name)}")
        user = str(name)
        fname = _join(where, user)
        if ":" in user:
            _fail(fname, "a user name cannot contain ':' (basic auth splits on it)")
        # Never echo the value: it should be a hash, but may be a pasted password.
        if not isinstance(hashed, str):
            _fail(fname, f"expected a bcrypt hash string, got {_kind(hashed)}")
        encoded = hashed.strip().encode("utf-8", "replace")
        match = _BCRYPT_HASH.fullmatch(encoded)
        if match is None:
            _fail(fname, "not a bcrypt hash (expected $2a$, $2b$ or $2y$, cost, 53 characters)")
        cost = int(match.group(1))
        if not 4 <= cost <= 31:
            _fail(fname, f"bcrypt cost {cost} is out of range (4-31)")
        users[user] = encoded
    return users


def _go_duration(value: object, where: str) -> float:
    """Seconds from a Go duration string (``1m30s``, ``500ms``, ``0``)."""
    if isinstance(value, int) and not isinstance(value, bool) and value == 0:
        return 0.0
    if not isinstance(value, str) or not value.strip():
        _fail(where, f"expected a duration like 1s or 500ms, got {_kind(value)}")
    text = value.strip()
    if text == "0":
        return 0.0
    pos, seconds = 0, 0.0
    while pos < len(text):
        match = _GO_DURATION_PART.match(text, pos)
        if match is None:
            _fail(where, f"{value!r} is not a duration (use 1s, 500ms, 1m30s, ...)")
        seconds += float(match.group(1)) * _GO_DURATION_UNITS[match.group(2)]
        pos = match.end()
    return seconds


def _rate_limit(value: object, where: str) -> RateLimit | None:
    d = _mapping(value, where)
    _only(d, where, _RATE_KEYS)
    d = _present(d)
    if not d:
        return None
    interval = _go_duration(d.get("interval", 0), _join(where, "interval"))
    burst = d.get("burst", 0)
    if isinstance(burst, bool) or not isinstance(burst, int):
        _fail(_join(where, "burst"), f"expected an integer, got {_kind(burst)}")
    if interval == 0:
        return None  # "set to 0 to disable rate limiter"
    if burst < 1:
        _fail(_join(where, "burst"), "must be at least 1 when interval is set")
    return RateLimit(interval=interval, burst=burst)


# --------------------------------------------------------------------------- TLS


def _tls(
    d: dict[str, Any], where: str, base_dir: Path
) -> tuple[ssl.SSLContext | None, frozenset[str] | None]:
    d = _present(d)
    if not d:
        return None, None

    def path_of(key: str) -> Path | None:
        text = _str(d, key, where)
        if text is None or text == "":
            return None
        p = Path(text)
        return p if p.is_absolute() else base_dir / p

    def inline(key: str) -> str | None:
        text = _str(d, key, where)
        return text if text else None

    cert_file, key_file, ca_file = (
        path_of("cert_file"),
        path_of("key_file"),
        path_of("client_ca_file"),
    )
    cert_pem, key_pem, ca_pem = inline("cert"), inline("key"), inline("client_ca")
    for a, b, va, vb in (
        ("cert", "cert_file", cert_pem, cert_file),
        ("key", "key_file", key_pem, key_file),
        ("client_ca", "client_ca_file", ca_pem, ca_file),
    ):
        if va is not None and vb is not None:
            _fail(_join(where, a), f"cannot be set together with {b}")
    cert_name = "cert" if cert_pem is not None else "cert_file"
    key_name = "key" if key_pem is not None else "key_file"
    has_cert = cert_pem is not None or cert_file is not None
    has_key = key_pem is not None or key_file is not None
    if has_cert and not has_key:
        _fail(_join(where, "key_file"), f"required when {cert_name} is set")
    if has_key and not has_cert:
        _fail(_join(where, "cert_file"), f"required when {key_name} is set")
    if not has_cert:
        _fail(_join(where, "cert_file"), f"required when {where} is set")

    min_version = _tls_version(d, "min_version", where, "TLS12")
    max_version = _tls_version(d, "max_version", where, "TLS13")
    if min_version > max_version:
        _fail(_join(where, "min_version"), "is higher than max_version")

    auth_name = _str(d, "client_auth_type", where) or "NoClientCert"
    if auth_name not in _CLIENT_AUTH:
        names = ", ".join(_CLIENT_AUTH_NAMES)
        _fail(
            _join(where, "client_auth_type"),
            f"unknown value {auth_name!r} (expected one of {names})",
        )
    verify_mode = _CLIENT_AUTH[auth_name]
    has_ca = ca_pem is not None or ca_file is not None
    if has_ca and auth_name == "NoClientCert":
        ca_name = "client_ca" if ca_pem is not None else "client_ca_file"
        _fail(_join(where, ca_name), "set but client_auth_type is NoClientCert")

    sans = _str_list(d, "client_allowed_sans", where)
    allowed_sans: frozenset[str] | None = None
    if sans is not None:
        if auth_name not in _SAN_CLIENT_AUTH:
            _fail(
                _join(where, "client_allowed_sans"),
                "needs client_auth_type RequireAnyClientCert or RequireAndVerifyClientCert",
            )
        if not sans:
            _fail(_join(where, "client_allowed_sans"), "empty: no client could connect")
        allowed_sans = frozenset(_normalize_san(s) for s in sans)

    ciphers = _ciphers(d, where)
    curve = _curve(d, where)
    prefer_server = _bool(d, "prefer_server_cipher_suites", where, default=True)

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():  # TLSv1 / TLSv1_1 are deprecated in Python's ssl
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = min_version
        ctx.maximum_version = max_version
    if prefer_server:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if ciphers:
        try:
            ctx.set_ciphers(":".join(ciphers))
        except ssl.SSLError:
            _fail(_join(where, "cipher_suites"), "none of these can be used by this OpenSSL")
    if curve is not None:
        try:
            ctx.set_ecdh_curve(curve)
        except (ssl.SSLError, ValueError):
            _fail(_join(where, "curve_preferences"), "not supported by this OpenSSL")
    ctx.set_alpn_protocols(["http/1.1"])
    _load_cert_chain(
        ctx,
        where,
        cert=(cert_name, cert_file, cert_pem),
        key=(key_name, key_file, key_pem),
    )
    ctx.verify_mode = verify_mode
    if verify_mode != ssl.CERT_NONE or has_ca:
        _load_client_ca(ctx, where, ca_file, ca_pem)
    return ctx, allowed_sans


def _tls_version(d: Mapping[str, Any], key: str, where: str, default: str) -> ssl.TLSVersion:
    value = d.get(key, default)
    if not isinstance(value, str) or value not in _TLS_VERSIONS:
        _fail(
            _join(where, key),
            f"unknown TLS version {value!r} (expected TLS10, TLS11, TLS12 or TLS13)",
        )
    return _TLS_VERSIONS[value]


def _ciphers(d: Mapping[str, Any], where: str) -> list[str]:
    names = _str_list(d, "cipher_suites", where) or []
    openssl_names: list[str] = []
    for i, name in enumerate(names):
        if name not in _CIPHER_SUITES:
            _fail(
                f"{_join(where, 'cipher_suites')}[{i}]",
                f"unknown cipher suite {name!r} (use Go's names, e.g. "
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256)",
            )
        mapped = _CIPHER_SUITES[name]
        if mapped is not None:
            openssl_names.append(mapped)
    return openssl_names


def _curve(d: Mapping[str, Any], where: str) -> str | None:
    names = _str_list(d, "curve_preferences", where) or []
    for i, name in enumerate(names):
        if name not in _CURVES:
            expected = ", ".join(_CURVES)
            _fail(
                f"{_join(where, 'curve_preferences')}[{i}]",
                f"unknown curve {name!r} (expected one of {expected})",
            )
    return _CURVES[names[0]] if names else None


class _EncryptedKeyError(Exception):
    pass


def _refuse_password() -> bytes:
    raise _EncryptedKeyError


def _read(field: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        _fail(field, f"{path}: no such file")
    except IsADirectoryError:
        _fail(field, f"{path}: is a directory")
    except PermissionError:
        _fail(field, f"{path}: permission denied")
    except OSError as exc:
        _fail(field, f"{path}: cannot read ({exc.strerror})")


def _check_certificates(field: str, pem: bytes, source: str) -> None:
    """Fail unless `pem` holds at least one PEM certificate that OpenSSL can parse."""
    scratch = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        scratch.load_verify_locations(cadata=pem.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        _fail(field, f"no valid PEM certificate in {source}")


def _load_cert_chain(
    ctx: ssl.SSLContext,
    where: str,
    *,
    cert: tuple[str, Path | None, str | None],
    key: tuple[str, Path | None, str | None],
) -> None:
    cert_name, cert_path, cert_text = cert
    key_name, key_path, key_text = key
    cert_field, key_field = _join(where, cert_name), _join(where, key_name)
    cert_pem = _read(cert_field, cert_path) if cert_path else (cert_text or "").encode()
    key_pem = _read(key_field, key_path) if key_path else (key_text or "").encode()
    cert_source = str(cert_path) if cert_path else "the inline cert"
    key_source = str(key_path) if key_path else "the inline key"
    _check_certificates(cert_field, cert_pem, cert_source)
    if b"ENCRYPTED" in key_pem:
        _fail(key_field, f"{key_source}: encrypted private keys are not supported")
    with tempfile.TemporaryDirectory(prefix="llm-probe-exporter-tls-") as tmp:
        # load_cert_chain only takes paths: inline PEM goes to a private temporary file.
        def on_disk(path: Path | None, pem: bytes, name: str) -> str:
            if path is not None:
                return str(path)
            target = os.path.join(tmp, name)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            return target

        certfile = on_disk(cert_path, cert_pem, "cert.pem")
        keyfile = on_disk(key_path, key_pem, "key.pem")
        try:
            ctx.load_cert_chain(certfile, keyfile, password=_refuse_password)
        except _EncryptedKeyError:
            _fail(key_field, f"{key_source}: encrypted private keys are not supported")
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                _fail(key_field, f"{key_source} does not match the certificate in {cert_name}")
            _fail(key_field, f"no valid PEM private key in {key_source}")
        except OSError as exc:  # the file changed under us
            _fail(key_field, f"cannot load ({exc.strerror})")


def _load_client_ca(
    ctx: ssl.SSLContext, where: str, ca_file: Path | None, ca_pem: str | None
) -> None:
    if ca_file is not None:
        field_name = _join(where, "client_ca_file")
        pem = _read(field_name, ca_file)
        _check_certificates(field_name, pem, str(ca_file))
        ctx.load_verify_locations(cadata=pem.decode("ascii", "replace"))
    elif ca_pem is not None:
        field_name = _join(where, "client_ca")
        _check_certificates(field_name, ca_pem.encode("utf-8", "replace"), "the inline client_ca")
        ctx.load_verify_locations(cadata=ca_pem)
    else:
        ctx.load_default_certs(ssl.Purpose.CLIENT_AUTH)  # Go: nil ClientCAs = system roots


def _normalize_san(value: str) -> str:
    """IP addresses in their canonical form (as Go prints them); anything else as is."""
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return value


# --------------------------------------------------------------------------- serving


class BasicAuthenticator:
    """Checks basic-auth credentials against bcrypt hashes without blocking the loop.

    `checkpw` defaults to `bcrypt.checkpw` (looked up at each call); tests may pass a
    wrapper. `dummy_hash` is what unknown users are checked against.
    """

    def __init__(
        self,
        users: Mapping[str, bytes],
        *,
        checkpw: Callable[[bytes, bytes], bool] | None = None,
        cache_size: int = AUTH_CACHE_SIZE,
        concurrency: int = BCRYPT_CONCURRENCY,
    ) -> None:
        self._users = {name.encode("utf-8"): hashed for name, hashed in users.items()}
        self._checkpw = checkpw
        self._cache: OrderedDict[bytes, None] = OrderedDict()
        self._cache_size = cache_size
        self._key = secrets.token_bytes(32)
        self._semaphore = asyncio.Semaphore(concurrency)
        cost = max((int(h[4:6]) for h in self._users.values()), default=10)
        self.dummy_hash: bytes = bcrypt.hashpw(
            secrets.token_hex(16).encode(), bcrypt.gensalt(rounds=cost)
        )

    async def verify(self, user: bytes, password: bytes) -> bool:
        """True if `user` is configured and `password` matches its hash."""
        password = password[:_BCRYPT_MAX_PASSWORD]
        key = hmac.digest(self._key, user + b":" + password, "sha256")
        if key in self._cache:
            self._cache.move_to_end(key)
            return True
        stored = self._users.get(user)
        hashed = stored if stored is not None else self.dummy_hash
        async with self._semaphore:
            matches = await asyncio.to_thread(self._check, password, hashed)
        if not (matches and stored is not None):
            return False
        self._cache[key] = None
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return True

    def _check(self, password: bytes, hashed: bytes) -> bool:
        checkpw = self._checkpw or bcrypt.checkpw
        try:
            return bool(checkpw(password, hashed))
        except ValueError:
            return False

    async def check_header(self, header: str | None) -> bool:
        """True if an ``Authorization`` header value holds valid Basic credentials."""
        credentials = _parse_basic(header)
        if credentials is None:
            return False
        return await self.verify(*credentials)


def _parse_basic(header: str | None) -> tuple[bytes, bytes] | None:
    if not header:
        return None
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(param.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    if not sep:
        return None
    return user, password


class _TokenBucket:
    def __init__(self, limit: RateLimit) -> None:
        self._rate = 1.0 / limit.interval
        self._burst = float(limit.burst)
        self._tokens = float(limit.burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False


def _peer_sans(request: web.Request) -> set[str]:
    transport = request.transport
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return set()
    sans: set[str] = set()
    for kind, value in cert.get("subjectAltName", ()):
        if kind in ("DNS", "email", "URI"):
            sans.add(value)
        elif kind == "IP Address":
            sans.add(_normalize_san(value))
    return sans


def security_middleware(config: WebConfig) -> Middleware:
    """The aiohttp middleware that enforces `config` on every request (see the module doc).

    Building it with basic-auth users costs one bcrypt (the dummy hash for unknown users).
    """
    authenticator = BasicAuthenticator(config.basic_auth_users) if config.basic_auth_users else None
    limiter = _TokenBucket(config.rate_limit) if config.rate_limit else None
    allowed_sans = config.client_allowed_sans
    extra_headers = tuple(config.headers.items())
    challenge = f'Basic realm="{REALM}"'

    def refuse(status: int, reason: str) -> web.Response:
        return web.Response(status=status, text=f"{status} {reason}\n")

    async def guarded(request: web.Request, handler: Handler) -> web.StreamResponse:
        if limiter is not None and not limiter.allow():
            return refuse(429, "Too Many Requests")
        if allowed_sans is not None and not (_peer_sans(request) & allowed_sans):
            return refuse(403, "Forbidden")
        if authenticator is not None and not await authenticator.check_header(
            request.headers.get(hdrs.AUTHORIZATION)
        ):
            response = refuse(401, "Unauthorized")
            response.headers[hdrs.WWW_AUTHENTICATE] = challenge
            return response
        return await handler(request)

    @web.middleware
    async def webconfig_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await guarded(request, handler)
        except web.HTTPException as exc:
            for name, value in extra_headers:
                exc.headers[name] = value
            raise
        if not response.prepared:
            for name, value in extra_headers:
                response.headers[name] = value
        return response

    return webconfig_middleware
