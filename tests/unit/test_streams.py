"""Objects streamed out of the store for a restore: whole, hashed, and never trusted when cut."""

from __future__ import annotations

import hashlib
import io
import os

import pytest

from service.errors import IntegrityError, StorageError
from service.storage import MemoryObjectStore
from service.streams import ObjectReader, feed_command

DATA = bytes(range(256)) * 5000  # 1.28 MB: several chunks


class FlakyBody(io.BytesIO):
    """A body whose connection breaks after `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int) -> None:
        super().__init__(data)
        self.fail_after = fail_after

    def read(self, size=-1):
        if self.tell() >= self.fail_after:
            raise ConnectionResetError("connection reset by peer")
        return super().read(min(size, self.fail_after - self.tell()) if size and size > 0 else size)


class FlakyStore(MemoryObjectStore):
    """open_stream breaks the first `failures` bodies midway."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures
        self.opened = 0

    def open_stream(self, key):
        self.opened += 1
        data = self.get_bytes(key)
        if self.opened <= self.failures:
            return FlakyBody(data, 300_000 * self.opened)
        return io.BytesIO(data)


def read_all(reader: ObjectReader) -> bytes:
    try:
        return b"".join(reader.chunks())
    finally:
        reader.close()


def test_reader_resumes_after_a_broken_connection_without_duplicating_bytes():
    """A body that breaks midway is re-read from the start, skipping what was already passed on."""
    store = FlakyStore(failures=2)
    store.put_bytes("k", DATA)
    reader = ObjectReader(store, "k", chunk_size=100_000).start()
    assert read_all(reader) == DATA
    reader.check(len(DATA), hashlib.sha256(DATA).hexdigest(), "the dump")
    assert store.opened == 3


def test_reader_gives_up_and_raises_instead_of_ending_early():
    """Past its attempts the reader raises StorageError: the consumer never sees a clean end."""
    store = FlakyStore(failures=10)
    store.put_bytes("k", DATA)
    reader = ObjectReader(store, "k", chunk_size=100_000).start()
    with pytest.raises(StorageError):
        read_all(reader)
    with pytest.raises(StorageError):
        reader.check(len(DATA), hashlib.sha256(DATA).hexdigest(), "the dump")


def test_check_refuses_a_stream_that_differs_from_the_manifest():
    """Same size, other bytes: IntegrityError naming what was read."""
    store = MemoryObjectStore()
    store.put_bytes("k", DATA)
    reader = ObjectReader(store, "k").start()
    read_all(reader)
    with pytest.raises(IntegrityError) as caught:
        reader.check(len(DATA), "0" * 64, "the dump of table public.t")
    assert "public.t" in caught.value.message


def test_missing_object_is_an_error_not_an_empty_stream():
    """A missing key raises from chunks(); it never reads as zero bytes."""
    reader = ObjectReader(MemoryObjectStore(), "absent").start()
    with pytest.raises(StorageError):
        read_all(reader)


def test_feeder_reads_to_the_end_when_the_program_stops_early():
    """The program closes its input after a few bytes; the whole object is still hashed."""
    store = MemoryObjectStore()
    store.put_bytes("k", DATA)
    reader = ObjectReader(store, "k", chunk_size=65536).start()
    read_fd, write_fd = os.pipe()
    os.close(read_fd)  # the reader of the pipe is gone at once
    feeder = feed_command(reader, os.fdopen(write_fd, "wb"))
    feeder.join()
    reader.close()
    assert feeder.closed_early
    reader.check(len(DATA), hashlib.sha256(DATA).hexdigest(), "the dump")
