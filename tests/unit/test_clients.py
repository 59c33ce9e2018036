"""The choice of PostgreSQL client programs per operation and pair of servers (service.clients)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from service import clients
from service.clients import Client
from service.config import load_settings
from service.errors import ClientMissingError, SafetyError, VersionRefusedError

C15, C16, C18 = Client(15, "15.20", "/pg/15/bin"), Client(16, "16.9", "/pg/16/bin"), Client(18, "18.6", "/pg/18/bin")
ALL = (C15, C16, C18)


def test_backup_uses_the_servers_own_major_even_when_a_newer_client_is_installed():
    """A 15 server is dumped by pg_dump 15, not 18 (whose archive only a newer server accepts)."""
    assert clients.choose_dump_client(ALL, 15, "15.20") == C15
    assert clients.choose_dump_client(ALL, 18, "18.3") == C18


def test_backup_of_a_server_without_its_client_names_the_major_and_the_package():
    """No client of the server's major: exit 2, naming both versions and what to install."""
    with pytest.raises(ClientMissingError) as caught:
        clients.choose_dump_client((C15, C16), 18, "18.3", "fac-db")
    err = caught.value
    assert err.exit_code == 2
    assert "no PostgreSQL 18 client is installed for fac-db (PostgreSQL 18.3)" in err.message
    assert "installed: 15.20, 16.9, all older than the server" in err.message
    assert "postgresql-client-18" in err.hint
    with pytest.raises(ClientMissingError) as newer_only:
        clients.choose_dump_client((C18,), 15, "15.20")
    assert "older than the server" not in newer_only.value.message


def test_copy_into_a_newer_server_runs_the_sources_major():
    """db_to_db 15 -> 18: pg_dump, pg_restore and the producers are 15's; the target's psql is 18's."""
    chosen = clients.choose_copy_clients(ALL, (15, "15.20"), (18, "18.6"), source_name="fac-db",
                                         target_name="fac-snapshot-db")
    assert (chosen.source, chosen.target) == (C15, C18)
    same = clients.choose_copy_clients(ALL, (16, "16.9"), (16, "16.2"), source_name="a", target_name="b")
    assert (same.source, same.target) == (C16, C16)


def test_copy_into_an_older_server_is_refused_naming_both_versions():
    """18 -> 15 is refused (exit 3) with both versions and what to do."""
    with pytest.raises(VersionRefusedError) as caught:
        clients.choose_copy_clients(ALL, (18, "18.6"), (15, "15.20"), source_name="fac-snapshot-db",
                                    target_name="fac-db", what="restore")
    err = caught.value
    assert isinstance(err, SafetyError) and err.exit_code == 3
    assert "fac-snapshot-db (PostgreSQL 18.6) into fac-db (PostgreSQL 15.20)" in err.message
    assert "nothing was touched" in err.message
    assert "upgrade fac-db to PostgreSQL 18" in err.hint


def test_copy_refusal_comes_before_a_missing_client():
    """The downgrade is the answer even when the source's client is missing too."""
    with pytest.raises(VersionRefusedError):
        clients.choose_copy_clients((C15,), (17, "17.4"), (15, "15.20"), source_name="a", target_name="b")
    with pytest.raises(ClientMissingError):
        clients.choose_copy_clients((C15, C18), (17, "17.4"), (18, "18.6"), source_name="a", target_name="b")


def test_restore_reads_the_archive_with_the_pg_dump_major_that_wrote_it():
    """A 15 backup restores through pg_restore 15 onto 15 (no SET transaction_timeout) and onto 18."""
    for target in ((15, "15.20"), (18, "18.6")):
        chosen = clients.choose_restore_clients(ALL, dumped_by="15.20", source_server="15.20", target=target,
                                                backup_id="daily-06-04", target_name="fac-db")
        assert chosen.source == C15
    onto_18 = clients.choose_restore_clients(ALL, dumped_by="18.6", source_server="18.3", target=(18, "18.6"),
                                             backup_id="x", target_name="fac-db")
    assert onto_18.source == C18


def test_restore_of_a_newer_backup_onto_an_older_server_is_refused():
    """An 18 backup onto a 15 fac-db: exit 3, naming the backup's and the target's versions."""
    with pytest.raises(VersionRefusedError) as caught:
        clients.choose_restore_clients(ALL, dumped_by="18.6", source_server="18.3", target=(15, "15.20"),
                                       backup_id="daily-06-04", target_name="fac-db")
    assert "backup daily-06-04 (PostgreSQL 18.3) into fac-db (PostgreSQL 15.20)" in caught.value.message


def test_legacy_restore_uses_the_targets_major():
    """Old-tool backups have no manifest: the target's major reads them (they came from pg_dump 15)."""
    chosen = clients.choose_restore_clients(ALL, dumped_by=None, source_server=None, target=(15, "15.20"),
                                            backup_id="scheduled-06-04-10", target_name="fac-db")
    assert chosen.source == chosen.target == C15


def test_reader_is_the_archives_major_or_a_newer_one():
    """`pg_restore --list` needs a pg_restore at least as new as the archive's pg_dump."""
    assert clients.choose_reader(ALL, "16.9") == C16
    assert clients.choose_reader((C15, C18), "17.2") == C18
    assert clients.choose_reader(ALL, None) == C18
    with pytest.raises(ClientMissingError):
        clients.choose_reader((C15,), "18.6")


def test_compression_falls_back_to_gzip_where_the_build_lacks_the_method(monkeypatch):
    """zstd is used only by a pg_dump 16+ that supports it; otherwise gzip at the same level, recorded."""
    monkeypatch.setattr(clients, "supports_compression", lambda client, method: client.major >= 16)
    assert clients.compression_option(C15, "zstd", 3) == ("3", "gzip:3")
    assert clients.compression_option(C16, "zstd", 3) == ("zstd:3", "zstd:3")
    assert clients.compression_option(C18, "gzip", 1) == ("1", "gzip:1")
    assert clients.compression_option(C18, "none", 0) == ("0", "none")


def write_fake_pg_dump(bin_dir, version: str):
    bin_dir.mkdir(parents=True)
    script = bin_dir / "pg_dump"
    script.write_text(f'#!/bin/sh\necho "pg_dump (PostgreSQL) {version}"\n')
    script.chmod(0o755)


def test_discovery_finds_every_major_under_the_root_and_the_override_wins(tmp_path):
    """<root>/<major>/bin are probed by their pg_dump --version; FAC_BACKUP_PG_BIN replaces discovery."""
    write_fake_pg_dump(tmp_path / "root" / "15" / "bin", "15.20 (Debian 15.20-0+deb12u1)")
    write_fake_pg_dump(tmp_path / "root" / "18" / "bin", "18.6")
    (tmp_path / "root" / "17").mkdir()  # a major without programs is not a client
    found = clients.installed_clients(SimpleNamespace(pg_bin_dir=None, pg_root=str(tmp_path / "root")))
    assert [(c.major, c.version) for c in found] == [(15, "15.20"), (18, "18.6")]
    assert found[1].program("pg_restore") == str(tmp_path / "root" / "18" / "bin" / "pg_restore")
    only = clients.installed_clients(SimpleNamespace(pg_bin_dir=str(tmp_path / "root" / "18" / "bin"),
                                                     pg_root=str(tmp_path / "root")))
    assert [c.major for c in only] == [18]


def test_compression_setting_accepts_a_level_or_a_method():
    """FAC_BACKUP_COMPRESSION: `1` (gzip), `zstd:3`, `lz4`, `none`; anything else is a listed problem."""
    def read(value):
        problems: list[str] = []
        s = load_settings({"FAC_BACKUP_COMPRESSION": value} if value is not None else {}, problems)
        return (s.compression_method, s.compression), problems

    assert read(None) == (("gzip", 1), [])
    assert read("6") == (("gzip", 6), [])
    assert read("zstd:3") == (("zstd", 3), [])
    assert read("lz4") == (("lz4", 1), [])
    assert read("none") == (("none", 0), [])
    assert "gzip, lz4, zstd or none" in read("brotli:3")[1][0]
    assert "outside 1..22" in read("zstd:40")[1][0]
    assert "FAC_BACKUP_COMPRESSION=11 is outside 0..9" in read("11")[1][0]


def test_compression_support_is_asked_of_the_pg_dump_build_itself(tmp_path):
    """A build that rejects the method says so before connecting; one that accepts it fails on the
    connection instead (both answers as pg_dump 16+ gives them); 15 is never asked."""
    def fake(name: str, stderr: str) -> Client:
        bin_dir = tmp_path / name
        bin_dir.mkdir()
        script = bin_dir / "pg_dump"
        script.write_text(f'#!/bin/sh\necho "{stderr}" >&2\nexit 1\n')
        script.chmod(0o755)
        return Client(17, "17.2", str(bin_dir))

    lacking = fake("lacking", "pg_dump: error: invalid compression specification: this build does not "
                              "support compression with ZSTD")
    having = fake("having", 'pg_dump: error: connection to server on socket "/x/.s.PGSQL.5432" failed')
    assert clients.supports_compression(lacking, "zstd") is False
    assert clients.supports_compression(having, "zstd") is True
    assert clients.supports_compression(Client(15, "15.20", str(tmp_path / "having")), "zstd") is False
