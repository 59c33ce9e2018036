"""A TCP proxy on loopback that fails on cue: it forwards, then stalls without closing, or resets.

Networks fail by going silent more often than by refusing: a NAT or a proxy that
dropped a connection's state, an S3 front end that hangs, a database failover.
`FaultProxy` stands between the service and one server (moto, PostgreSQL):

- `stall()`: every open connection stops passing bytes in both directions and
  stays open (the peer sees nothing, not even a close); new connections are
  held the same way (`new_connections="forward"`: new ones pass, as after a NAT
  dropped only the old flows' state). A close by either end still reaches the
  other, so a server notices that a killed client is gone.
- `stall_after(nbytes, direction)`: stall on its own once that many bytes went
  "up" (client to server) or "down" since the call: mid-upload, mid-COPY.
- `heal()`: reset the stalled connections (as a network that came back answers
  old flows with RST) and forward again.
- `reset()`: RST every open connection now.
- `throttle(bytes_per_second)`: forward slowly (a link that is slow but moving).
"""

from __future__ import annotations

import select
import socket
import struct
import threading
import time

CHUNK = 64 * 1024
HOLD_BYTES = 256 * 1024  # what a stalled direction still takes in before its sender blocks
HTTP_METHODS = (b"GET", b"PUT", b"POST", b"HEAD", b"DELETE")


class _Pair:
    """One client connection and its upstream, with a gate both pumps wait at while stalled."""

    def __init__(self, client: socket.socket, upstream: socket.socket | None, stalled: bool) -> None:
        self.client, self.upstream = client, upstream
        self.open = threading.Event()  # set: bytes pass
        if not stalled:
            self.open.set()
        self.closed = False

    def close(self, reset: bool = False) -> None:
        self.closed = True
        self.open.set()  # release the pumps so they notice
        for sock in (self.client, self.upstream):
            if sock is None:
                continue
            try:
                # A pump blocked in recv holds the socket: shutdown wakes it and, unlike a bare
                # close, reaches the peer now (a FIN; or, with a zero linger, an RST at the close).
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD if reset else socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


class FaultProxy:
    """Forwards 127.0.0.1:`port` to `upstream`; see the module docstring."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._pairs: list[_Pair] = []
        self._stalled = False
        self._new_forward = False
        self._trip: dict[str, int] = {}
        self._rate = 0.0
        self.stalled_at: float | None = None  # monotonic time of the last stall
        self.requests: list[tuple[float, str]] = []  # (when, request line) of HTTP requests sent up
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        threading.Thread(target=self._accept, name="faultproxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # --- faults ---------------------------------------------------------------------------------

    def stall(self, *, new_connections: str = "stall") -> None:
        """Stop passing bytes on every connection, keeping each open (see the module docstring)."""
        with self._lock:
            self._stalled, self._new_forward = True, new_connections == "forward"
            self._trip = {}
            self.stalled_at = time.monotonic()
            for pair in self._pairs:
                pair.open.clear()

    def stall_after(self, nbytes: int, direction: str = "up", *, new_connections: str = "stall") -> None:
        """Stall once `nbytes` more went `direction` ("up": to the server; "down": to the client)."""
        with self._lock:
            self._trip = {"direction": direction, "left": nbytes,
                          "new": new_connections}  # type: ignore[dict-item]

    def heal(self) -> None:
        """Reset the stalled connections and forward everything again."""
        with self._lock:
            stalled = [p for p in self._pairs if not p.open.is_set()]
            self._stalled, self._trip = False, {}
        for pair in stalled:
            pair.close(reset=True)

    def forward(self) -> None:
        """Let every connection pass its bytes again (held bytes go on)."""
        with self._lock:
            self._stalled, self._trip = False, {}
            for pair in self._pairs:
                pair.open.set()

    def reset(self) -> None:
        """RST every open connection."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            pair.close(reset=True)

    def throttle(self, bytes_per_second: float) -> None:
        """Forward at most this many bytes per second per direction of each connection (0: no limit)."""
        self._rate = float(bytes_per_second)

    def close(self) -> None:
        try:
            self._listener.close()
        except OSError:
            pass
        self.reset()

    # --- plumbing -------------------------------------------------------------------------------

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                stalled = self._stalled and not self._new_forward
            upstream = None
            if not stalled:
                try:
                    upstream = socket.create_connection(self.upstream, timeout=10)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            pair = _Pair(client, upstream, stalled)
            with self._lock:
                self._pairs.append(pair)
            if upstream is None:
                continue  # a silent endpoint: accepted, never answered; heal() resets it
            for src, dst, direction in ((client, upstream, "up"), (upstream, client, "down")):
                threading.Thread(target=self._pump, args=(pair, src, dst, direction), daemon=True,
                                 name=f"faultproxy-{direction}").start()

    def _pump(self, pair: _Pair, src: socket.socket, dst: socket.socket, direction: str) -> None:
        held = bytearray()  # read while stalled, passed on only if the path comes back
        try:
            while not pair.closed:
                if pair.open.is_set():
                    if held:
                        dst.sendall(held)
                        self._count(direction, len(held))
                        held.clear()
                    data = src.recv(16 * 1024 if self._rate else CHUNK)
                    if not data:
                        break
                    if not pair.open.is_set():
                        held += data
                        continue
                    self._note(direction, data)
                    dst.sendall(data)
                    self._count(direction, len(data))
                    if self._rate:
                        time.sleep(len(data) / self._rate)
                elif len(held) < HOLD_BYTES:
                    # Stalled: still read a little (the sender soon blocks all the same), so that a
                    # close behind those bytes is seen and passed on.
                    if select.select([src], [], [], 0.2)[0]:
                        data = src.recv(HOLD_BYTES - len(held))
                        if not data:
                            break
                        held += data
                else:
                    pair.open.wait(0.2)
        except OSError:
            pass
        pair.close()  # either end's close (or error) closes the other: a close still gets through
        with self._lock:
            if pair in self._pairs:
                self._pairs.remove(pair)

    def _note(self, direction: str, data: bytes) -> None:
        """Remember the request line of an HTTP request on its way up (the S3 side)."""
        if direction == "up" and data[:7].split(b" ")[0] in HTTP_METHODS:
            self.requests.append((time.monotonic(), data.split(b"\r\n", 1)[0].decode("latin-1")))

    def _count(self, direction: str, nbytes: int) -> None:
        with self._lock:
            trip = self._trip
            if not trip or trip["direction"] != direction:
                return
            trip["left"] -= nbytes
            if trip["left"] > 0:
                return
        self.stall(new_connections=trip["new"])
