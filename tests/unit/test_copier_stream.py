"""The byte pump trusts a binary COPY stream only when it is whole."""

from __future__ import annotations

import io

import pytest

from service.copier import BINARY_SIGNATURE, BINARY_TRAILER, StreamGuard, pump
from service.errors import CommandError, CopyError

WHOLE = BINARY_SIGNATURE + b"\x00\x00\x00\x00\x00\x00\x00\x00" + b"\x00\x01\x00\x00\x00\x01x" + BINARY_TRAILER


class RecordingCopy:
    """Stands in for a psycopg Copy: remembers what it was given."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self.chunks.append(bytes(chunk))


def test_whole_stream_is_moved_unchanged_in_chunks():
    """Every byte reaches the COPY, in order, in chunks no larger than asked for."""
    copy = RecordingCopy()
    moved = pump(io.BytesIO(WHOLE), copy, "t", chunk_bytes=7)
    assert moved == len(WHOLE)
    assert b"".join(copy.chunks) == WHOLE
    assert max(len(c) for c in copy.chunks) <= 7


def test_stream_without_its_end_marker_is_refused():
    """A stream cut before the trailer (a producer that stopped early) raises CopyError."""
    with pytest.raises(CopyError, match="truncated"):
        pump(io.BytesIO(WHOLE[:-2]), RecordingCopy(), "public.t")


def test_empty_stream_is_refused():
    """A producer that wrote nothing at all did not copy the table."""
    with pytest.raises(CopyError, match="not a binary COPY stream"):
        pump(io.BytesIO(b""), RecordingCopy(), "public.t")


def test_stream_of_another_format_is_refused():
    """Text instead of binary COPY data (a psql writing messages to stdout) is refused."""
    with pytest.raises(CopyError, match="not a binary COPY stream"):
        pump(io.BytesIO(b"BEGIN\nSET\n" + BINARY_TRAILER), RecordingCopy(), "public.t")


def test_producer_failure_wins_over_the_stream_check():
    """The producer's exit status is checked first, so its own error is the one reported."""
    def producer_check():
        raise CommandError("psql was killed by SIGKILL")

    with pytest.raises(CommandError, match="SIGKILL"):
        pump(io.BytesIO(WHOLE[:20]), RecordingCopy(), "public.t", producer_check=producer_check)


def test_guard_sees_the_signature_split_across_chunks():
    """The signature and the trailer are recognised whatever the chunk boundaries."""
    guard = StreamGuard()
    for i in range(len(WHOLE)):
        guard.feed(WHOLE[i:i + 1])
    guard.finish("t")
    assert guard.bytes == len(WHOLE)
