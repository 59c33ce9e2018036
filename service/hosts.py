"""Do two host names reach one server? Compared as written first, then by address.

Used to refuse, before anything runs, bindings that would point a job at
itself (config.py; vcap.DatabaseBinding.same_database_as and
BucketBinding.same_bucket_as), and again by the copy and the drill before
they connect.

- Names are compared case-insensitively, without a trailing dot or IPv6
  brackets: `DB.internal.` is `db.internal`.
- `localhost` (and `*.localhost`), every 127.x.x.x address, `::1`, the
  unspecified addresses (`0.0.0.0`, `::`, which connect locally) and their
  IPv4-mapped forms are all "this machine": one server.
- Otherwise both names are resolved (at most RESOLVE_SECONDS each); two names
  that share an address are one server. A name that does not resolve now
  (a DNS hiccup at start) is not an error: the names as written decide, so
  two different names count as two servers. What resolution cannot see (this
  machine's own non-loopback address beside 127.0.0.1, two names of one
  server behind different addresses) is not caught.
"""

from __future__ import annotations

import ipaddress
import socket
import threading

RESOLVE_SECONDS = 2.0
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def normalize(host: str) -> str:
    """The name as compared: trimmed, lower case, no trailing dot, no IPv6 brackets."""
    return host.strip().lower().rstrip(".").removeprefix("[").removesuffix("]")


def same_host(a: str, b: str) -> bool:
    """True when `a` and `b` name one server (see the module docstring)."""
    a, b = normalize(a), normalize(b)
    if a == b:
        return True
    if a.startswith("/") or b.startswith("/"):  # libpq: a directory of Unix sockets
        return False
    left, right = addresses(a), addresses(b)
    if not left or not right:
        return False
    if all(_is_this_machine(x) for x in left) and all(_is_this_machine(x) for x in right):
        return True
    return bool(left & right)


def shared_address(a: str, b: str) -> str:
    """An address both names resolve to (for a message), or ""."""
    common = sorted(str(x) for x in (addresses(normalize(a)) or set()) & (addresses(normalize(b)) or set()))
    return common[0] if common else ""


def addresses(host: str) -> frozenset[Address] | None:
    """The addresses `host` (normalized) stands for; None when it does not resolve in time."""
    literal = _literal(host)
    if literal is not None:
        return frozenset({literal})
    if host == "localhost" or host.endswith(".localhost"):  # never sent to DNS (RFC 6761)
        return frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})
    found: list = []

    def resolve() -> None:
        try:
            found.extend(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM))
        except (OSError, UnicodeError):
            pass

    worker = threading.Thread(target=resolve, name="resolve", daemon=True)
    worker.start()
    worker.join(RESOLVE_SECONDS)  # a resolver that hangs leaves the names to decide
    if worker.is_alive() or not found:
        return None
    return frozenset(a for a in (_literal(str(info[4][0]).split("%")[0]) for info in found) if a is not None)


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _is_this_machine(address: Address) -> bool:
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return address.is_loopback or address.is_unspecified
