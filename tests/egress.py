"""Test servers shaped like FAC's restricted-egress world, all on loopback.

- `Authority`: a throwaway certificate authority (the `cryptography` package) whose certificates
  the service trusts through CF_SYSTEM_CERT_PATH, as it trusts cloud.gov's own.
- `ForwardProxy`: a forward proxy like cloud.gov's egress proxy: Basic authentication, HTTP CONNECT
  and absolute-URI requests, an allowlist of destinations (403 otherwise), names only it can
  resolve, and, like the egress proxy's port 61443, optionally TLS on its own listener. It logs
  every request line with its answer.
- `WebhookReceiver`: an HTTPS (or HTTP) server that keeps every POSTed body and its headers.
- `MailServer`: aiosmtpd on a free port, keeping each message as received.
- `SilentServer`: accepts TCP connections and never says a word; `TricklingServer` says one byte
  at a time, forever, which no per-read timeout ever notices.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import json
import queue
import select
import socket
import socketserver
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class Authority:
    """A CA whose certificate is written to `trust_dir` (ca.crt, the only file there, as the
    platform's directory holds only CAs) and which issues server certificates, kept in `work_dir`."""

    def __init__(self, trust_dir: Path, work_dir: Path) -> None:
        self.directory = work_dir
        trust_dir.mkdir(parents=True, exist_ok=True)
        work_dir.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fac-backup test authority")])
        self._name = name
        self._cert = (self._builder(name, self._key.public_key())
                      .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                      .sign(self._key, hashes.SHA256()))
        self.ca_file = trust_dir / "ca.crt"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def _builder(self, subject, public_key):
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self._name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1)))

    def server_context(self, *names: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a certificate for `names` (DNS names or IPs)."""
        key = ec.generate_private_key(ec.SECP256R1())
        alt = []
        for name in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
        cert = (self._builder(subject, key.public_key())
                .add_extension(x509.SubjectAlternativeName(alt), critical=False)
                .sign(self._key, hashes.SHA256()))
        stem = self.directory / names[0].replace(":", "_")
        cert_file, key_file = stem.with_suffix(".pem"), stem.with_suffix(".key")
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


def _read_head(stream) -> tuple[str, dict[str, str]]:
    line = stream.readline(65537).decode("latin-1").rstrip("\r\n")
    headers: dict[str, str] = {}
    while True:
        header = stream.readline(65537).decode("latin-1").rstrip("\r\n")
        if not header:
            return line, headers
        name, _, value = header.partition(":")
        headers[name.strip().lower()] = value.strip()


def _pump(a: socket.socket, b: socket.socket) -> None:
    """Relay bytes both ways on one thread (a TLS socket must not be read and written from two)."""
    peers = {a: b, b: a}
    while True:
        ready = [s for s in peers if isinstance(s, ssl.SSLSocket) and s.pending()]
        if not ready:
            ready, _, _ = select.select(list(peers), [], [], 30)
            if not ready:
                return
        for s in ready:
            data = s.recv(65536)
            if not data:
                return
            peers[s].sendall(data)


class _Served:
    """A socketserver in `self.server`, serving on a thread between __enter__ and __exit__."""

    server: socketserver.BaseServer

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class ForwardProxy(_Served):
    """An authenticating forward proxy on 127.0.0.1; `log` holds one line per request."""

    def __init__(self, username: str, password: str, *, tls: ssl.SSLContext | None = None,
                 hosts: dict[str, str] | None = None, allow: tuple[str, ...] = ()) -> None:
        self.username, self.password, self.tls = username, password, tls
        self.hosts = dict(hosts or {})  # name -> address: only the proxy can resolve these
        self.allow = set(allow)  # "host:port" the proxy lets through
        self.log: list[str] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._handle(self.request, self.client_address)

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]

    def url(self, password: str | None = None) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.username}:{self.password if password is None else password}@127.0.0.1:{self.port}"

    def lines(self) -> list[str]:
        with self._lock:
            return list(self.log)

    def _record(self, client, line: str, status: int) -> None:
        with self._lock:
            self.log.append(f'{client[0]} "{line}" {status}')

    def _answer(self, conn, client, line: str, status: int, reason: str, extra: str = "") -> None:
        self._record(client, line, status)
        conn.sendall(f"HTTP/1.1 {status} {reason}\r\n{extra}Content-Length: 0\r\nConnection: close\r\n\r\n"
                     .encode("latin-1"))

    def _handle(self, conn: socket.socket, client) -> None:
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(conn, server_side=True)
            except (ssl.SSLError, OSError):
                self._record(client, "(TLS handshake failed)", 0)
                return
        stream = conn.makefile("rb")
        line, headers = _read_head(stream)
        if not line:
            return
        method, target, _version = (line.split(" ") + ["", ""])[:3]
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        if headers.get("proxy-authorization") != expected:
            self._answer(conn, client, line, 407, "Proxy Authentication Required",
                         'Proxy-Authenticate: Basic realm="egress"\r\n')
            return
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            port, path = int(port_text), ""
        else:
            parts = urlsplit(target)
            host, port = parts.hostname or "", parts.port or 80
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if f"{host}:{port}" not in self.allow:
            self._answer(conn, client, line, 403, "Forbidden")
            return
        try:
            upstream = socket.create_connection((self.hosts.get(host, host), port), timeout=10)
        except OSError:
            self._answer(conn, client, line, 502, "Bad Gateway")
            return
        with upstream:
            if method == "CONNECT":
                self._record(client, line, 200)
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                self._record(client, line, 200)
                body = stream.read(int(headers.get("content-length") or 0))
                kept = "".join(f"{k}: {v}\r\n" for k, v in headers.items()
                               if not k.startswith("proxy-") and k != "connection")
                upstream.sendall(f"{method} {path} HTTP/1.1\r\n{kept}Connection: close\r\n\r\n".encode("latin-1")
                                 + body)
            _pump(conn, upstream)


class WebhookReceiver(_Served):
    """Keeps each POST's (headers, JSON body); HTTPS when given a TLS context."""

    def __init__(self, tls: ssl.SSLContext | None = None, status: int = 200) -> None:
        self.posts: queue.Queue = queue.Queue()
        self.status = status
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length", 0))
                receiver.posts.put((dict(self.headers), json.loads(self.rfile.read(length))))
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.scheme = "https" if tls else "http"

    def url(self, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}/hook/secret-token"

    def received(self) -> list[tuple[dict, dict]]:
        found = []
        while not self.posts.empty():
            found.append(self.posts.get_nowait())
        return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MailServer:
    """An SMTP server (aiosmtpd) on 127.0.0.1; `messages` holds (envelope recipients, raw bytes)."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.messages: list[tuple[list[str], str, bytes]] = []
        server = self

        class Handler:
            async def handle_DATA(self, _server, _session, envelope):  # noqa: N802 - aiosmtpd's API
                server.messages.append((list(envelope.rcpt_tos), envelope.mail_from, envelope.original_content))
                return "250 Message accepted for delivery"

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port)

    def __enter__(self) -> MailServer:
        self.controller.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.controller.stop()


class TricklingServer:
    """Answers every connection with one byte ("2") every `every` seconds, never a whole line."""

    def __init__(self, every: float = 0.2) -> None:
        self.stop = threading.Event()
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.every = every

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        with conn:
            while not self.stop.wait(self.every):
                try:
                    conn.sendall(b"2")
                except OSError:
                    return

    def __enter__(self) -> TricklingServer:
        threading.Thread(target=self._serve, daemon=True).start()
        return self

    def __exit__(self, *_exc) -> None:
        self.stop.set()
        self.sock.close()


class SilentServer:
    """Listens and lets the kernel accept connections, then never sends or reads a byte."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]

    def __enter__(self) -> SilentServer:
        return self

    def __exit__(self, *_exc) -> None:
        self.sock.close()
