"""The HTTP port: /metrics and /healthz only, GET and HEAD only, bounded heads, slow clients cut off."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from service import httpserver
from service.httpserver import MetricsServer
from tests.fakes import trickle_until_closed


@pytest.fixture
def server():
    registry = CollectorRegistry()
    Counter("fac_backup_test_events", "a counter the page must show", registry=registry).inc()
    state = {"healthy": True}
    srv = MetricsServer(0, registry, lambda: state["healthy"], host="127.0.0.1", head_seconds=1.0).start()
    srv.state = state
    yield srv
    srv.close()


def ask(server, method: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def raw(server, payload: bytes, timeout: float = 5) -> bytes:
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout) as s:
        s.sendall(payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_metrics_and_healthz_answer_get_and_head(server):
    """GET /metrics is the Prometheus page; /healthz says ok, or 503 while not healthy; HEAD has
    the same status and length and no body."""
    status, headers, body = ask(server, "GET", "/metrics")
    assert status == 200 and b"fac_backup_test_events_total 1.0" in body
    assert headers["content-type"].startswith("text/plain")
    assert ask(server, "GET", "/healthz")[::2] == (200, b"ok\n")
    status, headers, body = ask(server, "HEAD", "/metrics")
    assert status == 200 and body == b"" and int(headers["content-length"]) > 0
    server.state["healthy"] = False
    assert ask(server, "GET", "/healthz")[0] == 503
    assert ask(server, "GET", "/healthz?probe=1")[0] == 503


def test_metrics_can_be_gzipped_for_prometheus(server):
    """Prometheus asks for gzip; the page comes compressed and decodes to the same text."""
    import gzip

    status, headers, body = ask(server, "GET", "/metrics", {"Accept-Encoding": "gzip"})
    assert status == 200 and headers["content-encoding"] == "gzip"
    assert b"fac_backup_test_events_total 1.0" in gzip.decompress(body)


@pytest.mark.parametrize("path", ["/", "/metricsx", "/metrics/", "/healthz/x", "/favicon.ico", "/..%2f"])
def test_any_other_path_is_404(server, path):
    """Only /metrics and /healthz exist: anything else is 404, never the metrics page."""
    status, _, body = ask(server, "GET", path)
    assert status == 404 and b"fac_backup" not in body


@pytest.mark.parametrize("method", ["DELETE", "POST", "PUT", "PATCH", "OPTIONS", "TRACE"])
@pytest.mark.parametrize("path", ["/healthz", "/metrics"])
def test_other_methods_are_405_with_allow(server, method, path):
    """DELETE /healthz (and any method but GET and HEAD) is 405 naming the allowed methods."""
    status, headers, _ = ask(server, method, path)
    assert status == 405 and headers["allow"] == "GET, HEAD"


def test_an_overlong_url_is_414_and_overlong_headers_431(server):
    """A 10 kB URL gets 414, 40 kB of headers or 200 header lines 431; the server goes on."""
    assert raw(server, b"GET /" + b"a" * 10_000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414 ")
    big = b"GET /healthz HTTP/1.1\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n"
    assert raw(server, big).startswith(b"HTTP/1.1 431 ")
    many = b"GET /healthz HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"
    assert raw(server, many).startswith(b"HTTP/1.1 431 ")
    assert raw(server, b"NOT HTTP\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    assert ask(server, "GET", "/healthz")[0] == 200


def test_keep_alive_serves_several_requests_on_one_connection(server):
    """Prometheus keeps its connection open: two requests, two answers, one connection."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        for path in ("/healthz", "/metrics", "/healthz"):
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200 and response.read()
    finally:
        conn.close()


def test_a_slow_head_is_cut_off_at_its_deadline(server):
    """A client sending its head a byte at a time is answered 408 and closed once the whole head
    has not arrived within the deadline (1 s here), however often bytes come."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=0.2) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        data, closed_after = trickle_until_closed(s, b"X", 10)
        assert closed_after < 5, "the slow client kept its connection"
    assert data.startswith(b"HTTP/1.1 408 ")


def test_at_the_cap_the_longest_waiting_connection_makes_room(monkeypatch):
    """With every connection slot taken by clients that never finish their request, a new client
    still gets /healthz answered: the one that has waited longest is closed to make room."""
    srv = MetricsServer(0, CollectorRegistry(), lambda: True, host="127.0.0.1", max_connections=4).start()
    idle = []
    try:
        for _ in range(4):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /metrics HTTP/1.1\r\n")
            idle.append(s)
        deadline = time.monotonic() + 5
        while srv.open_connections() < 4:  # accepted, in order
            assert time.monotonic() < deadline
            time.sleep(0.01)
        started = time.monotonic()
        assert ask(srv, "GET", "/healthz")[0] == 200
        assert time.monotonic() - started < 1
        assert idle[0].recv(1) == b""  # the oldest was closed
        assert srv.open_connections() <= 4
    finally:
        for s in idle:
            s.close()
        srv.close()


def test_the_connection_budget_leaves_most_descriptors_to_the_rest():
    """The cap is a quarter of the open-file limit, between 16 and 256."""
    assert httpserver.connection_budget(1024) == 256
    assert httpserver.connection_budget(256) == 64
    assert httpserver.connection_budget(40) == 16
    assert httpserver.connection_budget(1 << 20) == 256


def test_a_port_in_use_is_a_clear_error(server):
    """Starting on a busy port says which port and what to do."""
    from service.errors import ServiceError

    with pytest.raises(ServiceError, match=f"port {server.port}"):
        MetricsServer(server.port, CollectorRegistry(), lambda: True, host="127.0.0.1")
