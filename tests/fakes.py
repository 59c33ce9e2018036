"""Deliberate faults: PostgreSQL programs that misbehave on cue, and a client that trickles.

`make_pg_bin(dir, pg_dump=SCRIPT)` builds a directory for FAC_BACKUP_PG_BIN in
which every PostgreSQL program is the real one except those given as shell
scripts. A script finds the real program in $REAL (e.g. `exec "$REAL" "$@"`)
and sees the table pattern in its arguments. `trickle_until_closed` is the
client that sends a byte at a time and never finishes its request.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

PROGRAMS = ("pg_dump", "pg_restore", "psql")


def make_pg_bin(directory: Path, **scripts: str) -> Path:
    """A bin dir with the real programs, except the ones replaced by `scripts` (name -> sh body)."""
    directory.mkdir(parents=True, exist_ok=True)
    for program in PROGRAMS:
        real = shutil.which(program)
        assert real, f"{program} is not installed"
        path = directory / program
        if program in scripts:
            path.write_text(f'#!/bin/sh\nREAL="{real}"\n{scripts[program]}\n')
            path.chmod(0o755)
        else:
            path.symlink_to(real)
    return directory


# pg_dump that writes part of the real dump for the matching table, then dies.
def dies_halfway(schema: str, table: str, after_bytes: int) -> str:
    return f"""case "$*" in
  *'--table="{schema}"."{table}"'*) "$REAL" "$@" | head -c {after_bytes}; kill -9 $$ ;;
  *) exec "$REAL" "$@" ;;
esac"""


# pg_dump that drops the matching table just before dumping it (as a concurrent migration would).
def drops_table_first(schema: str, table: str) -> str:
    return f"""case "$*" in
  *'--table="{schema}"."{table}"'*) psql -q -c 'DROP TABLE "{schema}"."{table}" CASCADE' >/dev/null 2>&1 ;;
esac
exec "$REAL" "$@\""""


# pg_dump that waits for a flag file before dumping the matching table.
def waits_for(schema: str, table: str, flag: Path) -> str:
    return f"""case "$*" in
  *'--table="{schema}"."{table}"'*) while [ ! -e "{flag}" ]; do sleep 0.05; done ;;
esac
exec "$REAL" "$@\""""


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_):
        yield self.body


def s3_internal_error(url: str):
    """An HTTP 500 as S3 would send it, for a botocore `before-send` hook to return."""
    from botocore.awsrequest import AWSResponse

    body = b"<Error><Code>InternalError</Code><Message>injected fault</Message></Error>"
    return AWSResponse(url, 500, {"Content-Type": "application/xml"}, _Raw(body))


def access_denied(url: str):
    """An HTTP 403 as S3 sends it to credentials without the permission."""
    from botocore.awsrequest import AWSResponse

    body = b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>"
    return AWSResponse(url, 403, {"Content-Type": "application/xml"}, _Raw(body))


# pg_dump that sends the first bytes of the matching table's dump, then hangs with its output open.
def stalls_after(schema: str, table: str, after_bytes: int) -> str:
    return f"""case "$*" in
  *'--table="{schema}"."{table}"'*) "$REAL" "$@" | head -c {after_bytes}; sleep 600 ;;
  *) exec "$REAL" "$@" ;;
esac"""


def trickle_until_closed(sock: socket.socket, byte: bytes, limit: float) -> tuple[bytes, float]:
    """Send `byte` every socket timeout (set by the caller) until the server closes or `limit`
    seconds pass; return what the server sent and the seconds it took."""
    started, data = time.monotonic(), b""
    while time.monotonic() - started < limit:
        try:
            sock.send(byte)
            chunk = sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:  # reset after the close
            break
        if not chunk:
            break
        data += chunk
    return data, time.monotonic() - started
