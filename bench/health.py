"""`python -m bench health`: how fast /healthz answers while the HTTP port is attacked.

The daemon's HTTP server (with the real metrics registry, every job's series
pre-initialised) and its control socket run in a child process whose open-file
limit is a common default (NOFILE, 1024), or a smaller one that 500 connections
pass (SMALL_NOFILE, 256). This process then:

1. floods `/metrics` from FLOOD_THREADS threads (a new connection per request,
   as a misbehaving scraper or a curl loop would) for SECONDS;
2. holds SLOW_CLIENTS slow connections (a request line, then one header byte
   per second, never finishing: slowloris) for SECONDS;

while a prober in a process of its own asks `/healthz` every PROBE_INTERVAL
(timeout 5 s, a new connection each time, as cloud.gov's health check does) and
`ctl status` on the control socket. Reported: each probe series' worst latency,
p99 and median, and how many probes failed or took over 1 s (cloud.gov's
default health-check timeout).
"""

from __future__ import annotations

import http.client
import json
import multiprocessing
import os
import resource
import selectors
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import REPO, print_table

SECONDS = 20.0
FLOOD_THREADS = 8
SLOW_CLIENTS = 500
PROBE_INTERVAL = 0.1
PROBE_TIMEOUT = 5.0
CONNECTS_IN_FLIGHT = 4
CONNECT_TIMEOUT = 3.0  # one lost SYN is retransmitted after 1 s
CONNECTING_SECONDS = 60.0
NOFILE = 1024  # a common default soft limit
SMALL_NOFILE = 256  # a container with less: 500 slow clients pass it

SERVE = """
import resource, sys, threading
from prometheus_client import CollectorRegistry
from service import jobs
from service.control import ControlServer
from service.httpserver import MetricsServer
from service.log import configure_logging
from service.metrics import Metrics
configure_logging("json", sys.stderr)
resource.setrlimit(resource.RLIMIT_NOFILE, ({nofile}, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry(auto_describe=True))
http = MetricsServer({port}, metrics.registry, lambda: True, host="127.0.0.1").start()
control = ControlServer({socket!r}, lambda request: {{"scheduler_running": True}}).start()
print("ready", flush=True)
sys.stdin.read()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, timeout: float) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def ctl_status(path: str, timeout: float) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(path)
        s.sendall(b'{"command": "status"}\n')
        return json.loads(s.makefile("rb").readline()).get("ok") is True


def probe(port: int, control: str, seconds: float, out) -> None:
    """In its own process: /healthz and ctl status every PROBE_INTERVAL; latencies (None: failed)."""
    health, ctl = [], []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for series, ask in ((health, lambda: get(port, "/healthz", PROBE_TIMEOUT) == 200),
                            (ctl, lambda: ctl_status(control, PROBE_TIMEOUT))):
            start = time.perf_counter()
            try:
                ok = ask()
            except OSError:
                ok = False
            series.append(time.perf_counter() - start if ok else None)
        time.sleep(PROBE_INTERVAL)
    out.put((health, ctl))


def flood(port: int, stop: threading.Event, results: list, ready: threading.Event) -> None:
    ready.set()
    while not stop.is_set():
        try:
            results.append(get(port, "/metrics", 10))
        except OSError:
            results.append(0)


def slow_clients(port: int, stop: threading.Event, results: list, ready: threading.Event) -> None:
    """SLOW_CLIENTS connections that each send a request line and then a byte a second, never
    finishing; `ready` once each was connected or given up."""
    selector, connected = selectors.DefaultSelector(), []
    give_up = time.monotonic() + CONNECTING_SECONDS
    while len(connected) < SLOW_CLIENTS and time.monotonic() < give_up:
        # A few connects in flight at a time, as a client that opens connections one after
        # another would (a burst would only overflow the listen queue and measure that);
        # one that is not accepted in time is tried again until CONNECTING_SECONDS passed.
        while len(connected) + len(selector.get_map()) < SLOW_CLIENTS \
                and len(selector.get_map()) < CONNECTS_IN_FLIGHT:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            selector.register(s, selectors.EVENT_WRITE, time.monotonic() + CONNECT_TIMEOUT)
        for key, _ in selector.select(timeout=0.2):
            selector.unregister(key.fileobj)
            if key.fileobj.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                key.fileobj.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
                connected.append(key.fileobj)
            else:
                key.fileobj.close()
        for key in [k for k in selector.get_map().values() if k.data < time.monotonic()]:
            selector.unregister(key.fileobj)  # not accepted in time: the server is full or slow
            key.fileobj.close()
    for key in list(selector.get_map().values()):
        key.fileobj.close()
    selector.close()
    ready.set()
    while not stop.wait(1.0):
        for s in connected:
            try:
                s.send(b"X")
            except OSError:
                pass
    still = 0
    for s in connected:  # held open by the server to the end, without an answer?
        try:
            s.recv(1)  # an answer (408) or b"" (closed): not held
        except BlockingIOError:
            still += 1
        except OSError:
            pass
        s.close()
    results.append((len(connected), still))


def figures(latencies: list) -> tuple:
    done = sorted(x for x in latencies if x is not None)
    failed = len(latencies) - len(done)
    if not done:
        return len(latencies), failed, "-", "-", "-", "-"
    p99 = done[min(len(done) - 1, int(len(done) * 0.99))]
    worst = "timeout" if failed else f"{done[-1] * 1000:.0f} ms"
    return (len(latencies), failed, sum(1 for x in done if x > 1.0), worst, f"{p99 * 1000:.0f} ms",
            f"{done[len(done) // 2] * 1000:.1f} ms")


def scenario(name: str, port: int, control: str, load) -> list[tuple]:
    stop, results, ready = threading.Event(), [], [threading.Event() for _ in load]
    queue = multiprocessing.Queue()
    prober = multiprocessing.Process(target=probe, args=(port, control, SECONDS, queue))
    threads = [threading.Thread(target=target, args=(port, stop, results, r), daemon=True)
               for target, r in zip(load, ready, strict=True)]
    for t in threads:
        t.start()
    for r in ready:
        r.wait(60)
    time.sleep(1.0)  # the load is on before the first probe
    prober.start()
    health, ctl = queue.get(timeout=SECONDS + 60)
    prober.join()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    extra = ""
    if results and isinstance(results[0], int):
        ok = sum(1 for c in results if c == 200)
        extra = f"/metrics: {ok / (SECONDS + 1):.0f} answered/s, {len(results) - ok} refused or failed"
    elif results:
        opened, still = results[0]
        extra = f"{opened} slow connections opened, {still} still held by the server at the end"
    return [(name, "/healthz", *figures(health), extra), (name, "ctl status", *figures(ctl), "")]


class Server:
    """The HTTP server and the control socket in a child process limited to `nofile` open files."""

    def __init__(self, nofile: int, tmp: str) -> None:
        self.port, self.control = free_port(), str(Path(tmp) / f"c{nofile}.sock")
        code = SERVE.format(nofile=nofile, port=self.port, socket=self.control)
        self.child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(REPO)))
        assert self.child.stdout.readline().strip() == b"ready"

    def close(self) -> None:
        self.child.stdin.close()
        self.child.kill()
        self.child.wait()


def main(flags: list[str]) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 8192)), hard))  # our 500 clients
    rows = []
    with tempfile.TemporaryDirectory(prefix="bh-", dir="/tmp") as tmp:
        for nofile, loads in ((NOFILE, {"idle": [], f"/metrics flood, {FLOOD_THREADS} threads": [flood] * FLOOD_THREADS,
                                        f"{SLOW_CLIENTS} slow clients": [slow_clients]}),
                              (SMALL_NOFILE, {f"{SLOW_CLIENTS} slow clients": [slow_clients]})):
            server = Server(nofile, tmp)
            try:
                for name, load in loads.items():
                    rows += scenario(f"{name} (NOFILE {nofile})", server.port, server.control, load)
            finally:
                server.close()
    print_table(f"/healthz and ctl status under load ({SECONDS:g} s each)", rows,
                ("load", "probe", "probes", "failed", "over 1 s", "worst", "p99", "median", "load achieved"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
