"""How notifications leave the container: which proxy a URL goes through, and the one webhook POST.

FAC's production space reaches the internet only through cloud.gov's egress proxy, bound as the
user-provided service `https-proxy-creds` (FAC_BACKUP_PROXY_SERVICE names another). Its
`credentials.https_uri` (`uri` in older bindings, the key FAC's own start script reads) is
`https://USER:PASSWORD@HOST.apps.internal:61443`: TLS to the proxy itself, then CONNECT to the
destination. The standard library's urllib cannot speak TLS to a proxy (it sends its CONNECT in
clear and the proxy's TLS port drops it), so the webhook goes out through urllib3 (botocore's own
HTTP library, already installed), which can, and which reads no environment variable itself:
every proxy decision is made here, once, from the configuration.

The rules (docs/notifications.md, "From a restricted-egress space"):
- with the binding, notifications use its proxy, authenticated as its URI says;
- without it, the environment's `https_proxy`/`http_proxy` (lowercase first, as curl and urllib
  read them), for notifications only;
- either way a host that the environment's `no_proxy` names is reached directly;
- S3 never goes through a proxy (service.storage), and the databases speak libpq, which has no
  notion of an HTTP proxy.

The proxy's password is a secret: it is kept out of reprs and messages (`Proxy.url` has no
credentials) and registered with the log redactor through Config.secrets().
"""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import urllib3

PROXY_SERVICE = "https-proxy-creds"
URI_KEYS = ("https_uri", "uri")  # the egress proxy module's key, then the older one


class DeliveryError(Exception):
    """A notification that did not arrive: `reason` is short and stable, `detail` says why; neither
    holds a secret."""

    def __init__(self, reason: str, detail: str = "", hint: str = "") -> None:
        super().__init__(reason)
        self.reason, self.detail, self.hint = reason, detail, hint


@dataclass(frozen=True)
class Proxy:
    """A forward proxy; `url` (scheme://host:port) carries no credentials and may be logged."""

    url: str
    source: str  # where it was configured, for messages: "binding 'https-proxy-creds'"
    username: str = ""
    password: str = field(default="", repr=False)

    def headers(self) -> dict[str, str]:
        if not (self.username or self.password):
            return {}
        token = base64.b64encode(f"{self.username}:{self.password}".encode()).decode("ascii")
        return {"Proxy-Authorization": f"Basic {token}"}


@dataclass(frozen=True)
class Egress:
    """The proxies notifications use, by the destination's scheme, and the hosts reached directly."""

    https: Proxy | None = None
    http: Proxy | None = None
    no_proxy: str = ""
    trust_dir: str | None = None  # CF_SYSTEM_CERT_PATH: the platform's CAs, which sign the proxy's certificate

    def proxy_for(self, url: str) -> Proxy | None:
        parts = urlsplit(url)
        proxy = self.https if parts.scheme == "https" else self.http
        if proxy is None or not parts.hostname:
            return proxy
        where = f"{parts.hostname}:{parts.port}" if parts.port else parts.hostname
        if self.no_proxy and urllib.request.proxy_bypass_environment(where, {"no": self.no_proxy}):
            return None
        return proxy

    def secrets(self) -> tuple[str, ...]:
        return tuple(p.password for p in (self.https, self.http) if p is not None and p.password)


def parse_proxy(uri: str, source: str, problems: list[str]) -> Proxy | None:
    """A Proxy from `scheme://[user:password@]host:port`; problems never quote the URI (it holds
    the password)."""
    uri = uri.strip()
    if "://" not in uri:
        uri = f"http://{uri}"  # `host:port`, as curl and urllib read a proxy variable
    try:
        parts = urlsplit(uri)
        port = parts.port
    except ValueError:
        problems.append(f"the proxy URI from {source} is not a URL with a numeric port")
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        problems.append(f"the proxy URI from {source} must be http(s)://user:password@host:port")
        return None
    port = port or (443 if parts.scheme == "https" else 80)
    return Proxy(f"{parts.scheme}://{parts.hostname}:{port}", source,
                 unquote(parts.username or ""), unquote(parts.password or ""))


def _environment_value(environ: Mapping[str, str], name: str) -> str:
    """`name` in lowercase, else in uppercase (urllib's and curl's order); an empty value is unset."""
    for key in (name, name.upper()):
        if key in environ:
            return environ[key].strip()
    return ""


def read_egress(environ: Mapping[str, str], bindings: dict, problems: list[str]) -> Egress:
    """The proxy binding (FAC_BACKUP_PROXY_SERVICE, default https-proxy-creds) when present,
    else the environment's proxy variables; an explicitly named binding must exist."""
    named = (environ.get("FAC_BACKUP_PROXY_SERVICE") or "").strip()
    service = named or PROXY_SERVICE
    no_proxy = _environment_value(environ, "no_proxy")
    trust_dir = (environ.get("CF_SYSTEM_CERT_PATH") or "").strip() or None
    binding = bindings.get(service)
    if binding is None:
        if named and bindings:
            problems.append(f"no service binding named {named!r} in VCAP_SERVICES (FAC_BACKUP_PROXY_SERVICE)")
        found = {}
        for scheme in ("https", "http"):
            value = _environment_value(environ, f"{scheme}_proxy")
            found[scheme] = parse_proxy(value, f"the environment's {scheme}_proxy", problems) if value else None
        return Egress(found["https"], found["http"], no_proxy, trust_dir)
    creds = binding.get("credentials") if isinstance(binding, dict) else None
    uri = next((str(creds[k]) for k in URI_KEYS if isinstance(creds, dict) and creds.get(k)), "")
    if not uri:
        problems.append(f"binding {service!r} lacks credential key(s): {' or '.join(URI_KEYS)}")
        return Egress(no_proxy=no_proxy, trust_dir=trust_dir)
    proxy = parse_proxy(uri, f"binding {service!r}", problems)
    return Egress(proxy, proxy, no_proxy, trust_dir)


def build_ssl_context(trust_dir: str | None) -> ssl.SSLContext:
    """The system's CAs plus the platform's (CF_SYSTEM_CERT_PATH), which sign the egress proxy's
    certificate on its apps.internal route."""
    context = ssl.create_default_context()
    if trust_dir and Path(trust_dir).is_dir():
        for path in sorted(Path(trust_dir).iterdir()):
            try:
                context.load_verify_locations(cafile=str(path))
            except (ssl.SSLError, OSError, ValueError):
                continue  # not a certificate: the platform's directory, not ours to police
    return context


def post_json(url: str, payload: dict, *, egress: Egress, deadline: float) -> int:
    """POST `payload` as JSON to `url`, through the proxy `egress` chooses, within `deadline`
    (time.monotonic()); return the HTTP status or raise DeliveryError."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeliveryError("timeout", "no time was left for the webhook")
    context = build_ssl_context(egress.trust_dir)
    proxy = egress.proxy_for(url)
    if proxy is None:
        manager = urllib3.PoolManager(ssl_context=context)
    else:
        manager = urllib3.ProxyManager(proxy.url, proxy_headers=proxy.headers(), ssl_context=context,
                                       proxy_ssl_context=context if proxy.url.startswith("https:") else None)
    try:
        response = manager.request(
            "POST", url, body=json.dumps(payload).encode("utf-8"), retries=False, redirect=False,
            headers={"Content-Type": "application/json", "User-Agent": "fac-backup"},
            timeout=urllib3.Timeout(total=left))
    except urllib3.exceptions.HTTPError as exc:
        raise translate(exc, url, proxy, left) from None
    finally:
        manager.clear()
    if response.status == 407 and proxy is not None:
        raise _refused_credentials(proxy)
    if response.status >= 300:
        raise DeliveryError(f"HTTP {response.status}", f"the webhook answered HTTP {response.status}")
    return response.status


def _refused_credentials(proxy: Proxy) -> DeliveryError:
    return DeliveryError("proxy HTTP 407", f"the proxy {proxy.url} refused the credentials of {proxy.source} "
                         "(HTTP 407 Proxy Authentication Required)",
                         f"check the user and password in the URI of {proxy.source}")


def translate(exc: Exception, url: str, proxy: Proxy | None, timeout: float) -> DeliveryError:
    """A DeliveryError that says what failed, from urllib3's error; no URL path, no credentials."""
    parts = urlsplit(url)
    target = f"{parts.hostname}:{parts.port or (443 if parts.scheme == 'https' else 80)}"
    inner = getattr(exc, "original_error", None)
    text = f" {inner} "
    if isinstance(exc, urllib3.exceptions.SSLError) or isinstance(inner, (ssl.SSLError, urllib3.exceptions.SSLError)):
        whose = f"the proxy {proxy.url} or of {target}" if proxy else target
        return DeliveryError("tls", f"the TLS certificate of {whose} was not accepted ({_kind(exc)})",
                             "the system's CAs and those in CF_SYSTEM_CERT_PATH are trusted")
    if isinstance(exc, urllib3.exceptions.ProxyError):
        # urllib3's refused, unresolved and unanswered connects are all ConnectTimeoutErrors: the proxy was not
        # reached. Any other timeout came after it took the connection.
        if isinstance(inner, urllib3.exceptions.ConnectTimeoutError):
            return DeliveryError("proxy unreachable", f"cannot reach the proxy {proxy.url} ({_kind(exc)})",
                                 "check the network policy to the proxy (cf add-network-policy ... --port 61443)")
        if isinstance(inner, (TimeoutError, urllib3.exceptions.TimeoutError)):
            return DeliveryError("timeout", f"{target} did not answer within {timeout:.1f} s: the proxy {proxy.url} "
                                 "accepted the connection and then said nothing",
                                 "check the egress proxy (cf logs of its app); the job itself is unaffected")
        if " 407 " in text:
            return _refused_credentials(proxy)
        if " 403 " in text:
            return DeliveryError("proxy HTTP 403", f"the proxy {proxy.url} refused to connect to {target} (HTTP 403)",
                                 "add the webhook's host and port to the egress proxy's allowlist")
        status = next((w for w in text.split() if w.isdigit() and len(w) == 3), "")
        if status:
            return DeliveryError(f"proxy HTTP {status}", f"the proxy {proxy.url} answered HTTP {status} for {target}")
        return DeliveryError("proxy unreachable", f"cannot reach the proxy {proxy.url} ({_kind(exc)})",
                             "check the network policy to the proxy (cf add-network-policy ... --port 61443)")
    if isinstance(exc, urllib3.exceptions.ConnectTimeoutError):  # refused, unresolved or unanswered
        return DeliveryError("unreachable", f"cannot connect to {target} ({_kind(exc)})",
                             "in a restricted-egress space bind the egress proxy (https-proxy-creds)")
    if isinstance(exc, urllib3.exceptions.TimeoutError):
        via = f" through the proxy {proxy.url}" if proxy else ""
        return DeliveryError("timeout", f"{target} did not answer within {timeout:.1f} s{via}")
    return DeliveryError("failed", f"the webhook call to {target} failed ({_kind(exc)})")


def _kind(exc: Exception) -> str:
    inner = getattr(exc, "original_error", None) or exc.__cause__ or exc.__context__ or exc
    return type(inner).__name__

