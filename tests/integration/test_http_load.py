"""The real daemon's doors under load: /healthz within 1 s, and the control socket, while its HTTP
port is flooded or held by hundreds of slow clients. On loopback, bounded in count and time."""

from __future__ import annotations

import resource
import socket
import threading
import time
from pathlib import Path

import pytest

from service.control import send_request
from service.errors import ServiceError
from tests.integration.test_daemon import start_daemon  # noqa: F401 - the fixture

pytestmark = pytest.mark.integration
FLOOD_THREADS = 8
SLOW_CLIENTS = 500
SECONDS = 5.0  # of load while probing
PROBE_EVERY = 0.1
HEALTH_LIMIT = 1.0  # cloud.gov's default health-check timeout
DAEMON_NOFILE = 128  # far fewer than the slow clients: the limit is reached unless the port holds


def probe_while(daemon, seconds: float) -> tuple[list[float], list[float]]:
    """Ask /healthz (timeout HEALTH_LIMIT) and `ctl status` every PROBE_EVERY for `seconds`; their
    latencies, with HEALTH_LIMIT counted for a probe that failed or timed out."""
    health, ctl = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        started = time.perf_counter()
        ok = daemon.get("/healthz")[0] == 200  # its timeout is HEALTH_LIMIT
        health.append(time.perf_counter() - started if ok else HEALTH_LIMIT)
        started = time.perf_counter()
        try:
            ok = send_request(daemon.socket, {"command": "status"}, timeout=5).get("ok") is True
        except ServiceError:
            ok = False
        ctl.append(time.perf_counter() - started if ok else 5.0)
        time.sleep(PROBE_EVERY)
    return health, ctl


def test_healthz_answers_within_a_second_while_metrics_is_flooded(start_daemon):  # noqa: F811
    """Eight threads asking /metrics as fast as they can (a new connection each): every /healthz
    probe answers 200 within 1 s, and the control socket answers too."""
    daemon = start_daemon()
    daemon.wait_healthy()
    stop, answered = threading.Event(), []

    def flood() -> None:
        while not stop.is_set():
            answered.append(daemon.get("/metrics")[0])

    threads = [threading.Thread(target=flood, daemon=True) for _ in range(FLOOD_THREADS)]
    for t in threads:
        t.start()
    try:
        health, ctl = probe_while(daemon, SECONDS)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert answered.count(200) > 100, f"the flood got only {answered.count(200)} pages: not a flood"
    assert max(health) < HEALTH_LIMIT, f"/healthz worst {max(health):.3f} s of {len(health)} probes"
    assert max(ctl) < HEALTH_LIMIT, f"ctl status worst {max(ctl):.3f} s"


def open_slow_clients(port: int, count: int, seconds: float) -> list[socket.socket]:
    """Up to `count` connections that each sent a request line and a header, and stop there;
    what connected within `seconds`."""
    held, give_up = [], time.monotonic() + seconds
    while len(held) < count and time.monotonic() < give_up:
        s = socket.socket()
        s.settimeout(3.0)  # a SYN lost to a full listen queue is sent again after 1 s
        try:
            s.connect(("127.0.0.1", port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        held.append(s)
    return held


def test_healthz_and_the_control_socket_answer_while_slow_clients_hold_connections(start_daemon):  # noqa: F811
    """500 clients that send a byte of their head now and then and never finish, against a daemon
    allowed 128 open files: /healthz answers within 1 s and `ctl status` answers all along;
    the daemon stays far from its limit, and serves normally once they leave."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * SLOW_CLIENTS)), hard))
    daemon = start_daemon(nofile=DAEMON_NOFILE)
    daemon.wait_healthy()
    clients = open_slow_clients(daemon.port, SLOW_CLIENTS, 20)
    stop = threading.Event()

    def trickle() -> None:
        while not stop.wait(0.5):
            for s in clients:
                try:
                    s.send(b"X")
                except OSError:
                    pass

    trickler = threading.Thread(target=trickle, daemon=True)
    trickler.start()
    try:
        health, ctl = probe_while(daemon, SECONDS)
        descriptors = len(list(Path(f"/proc/{daemon.proc.pid}/fd").iterdir()))
    finally:
        stop.set()
        trickler.join(5)
        for s in clients:
            s.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert max(health) < HEALTH_LIMIT, f"/healthz worst {max(health):.3f} s of {len(health)} probes"
    assert max(ctl) < HEALTH_LIMIT, f"ctl status worst {max(ctl):.3f} s"
    assert len(clients) == SLOW_CLIENTS, f"only {len(clients)} slow clients connected"
    assert descriptors < DAEMON_NOFILE * 3 // 4, f"the daemon held {descriptors} descriptors"
    assert daemon.get("/healthz")[0] == 200
    assert not [e for e in daemon.events() if e["event"] == "http.crashed"]
