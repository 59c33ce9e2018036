"""How an operator-typed backup id resolves (finder.find_backup), on the in-memory store."""

from __future__ import annotations

import pytest

from service import catalog, layout
from service.errors import AmbiguousBackupError, BackupNotFoundError
from service.finder import find_backup, nearest_complete, resolution
from service.loader import build_count_check_sql, build_reset_sql, quote_ident
from service.storage import MemoryObjectStore


def put_backup(store, backup_id: str, started: str, *, manifest: bool = True) -> None:
    """A backup with one table dump and schema.dump; the manifest last, unless told not to."""
    store.put_bytes(layout.table_key(backup_id, "public", "t"), b"dump")
    store.put_bytes(layout.schema_key(backup_id), b"schema")
    if manifest:
        table = catalog.TableEntry("public", "t", layout.table_key(backup_id, "public", "t"), 4, "x", 1)
        catalog.write_manifest(store, catalog.Manifest(
            id=backup_id, job="scheduled_backup", started_at=started, finished_at=started, server_version="15.8",
            pg_dump_version="15.8", database="fac", tables=(table,),
            schema={"key": layout.schema_key(backup_id), "bytes": 6, "sha256": "y"}))


@pytest.fixture
def store():
    return MemoryObjectStore()


def test_exact_id_resolves_to_its_manifest(store):
    """The id as `list` prints it resolves to that backup."""
    put_backup(store, "daily-06-04", "2026-06-04T20:00:00-07:00")
    found = find_backup(store, "daily-06-04")
    assert found.id == "daily-06-04" and not found.legacy and found.manifest.tables[0].table == "t"
    assert find_backup(store, " backups/daily-06-04/ ").id == "daily-06-04"  # pasted as a key prefix


def test_an_exact_id_means_that_backup_beside_newer_siblings(store):
    """Two backups in one hour (`scheduled-12-01-09`, then `-2`): each id as printed means that one;
    the older is never replaced by its newer sibling, which is named as not chosen."""
    put_backup(store, "scheduled-12-01-09", "2026-12-01T09:00:05-08:00")
    put_backup(store, "scheduled-12-01-09-2", "2026-12-01T09:40:00-08:00")
    found = find_backup(store, "scheduled-12-01-09")
    assert (found.id, found.typed_as, found.others) == ("scheduled-12-01-09", "", ("scheduled-12-01-09-2",))
    assert resolution(found, "scheduled-12-01-09") == {
        "typed": "scheduled-12-01-09", "chosen": "scheduled-12-01-09", "exact": True,
        "not_chosen": ["scheduled-12-01-09-2"]}
    suffixed = find_backup(store, "scheduled-12-01-09-2")
    assert (suffixed.id, suffixed.others) == ("scheduled-12-01-09-2", ())
    assert resolution(suffixed, "scheduled-12-01-09-2") == {}


def test_suffixed_id_is_taken_literally(store):
    """Typing the suffixed id picks exactly that backup, even when it is not the newest."""
    put_backup(store, "scheduled-06-04-10", "2027-06-04T10:00:00-07:00")
    put_backup(store, "scheduled-06-04-10-2", "2026-06-04T10:00:00-07:00")
    assert find_backup(store, "scheduled-06-04-10-2").id == "scheduled-06-04-10-2"


def test_a_suffix_left_off_means_the_only_candidate(store):
    """The earlier backup pruned, `scheduled-06-04-10` can mean only `-2`: that one, saying how it was typed."""
    put_backup(store, "scheduled-06-04-10-2", "2026-06-04T10:40:00-07:00")
    found = find_backup(store, "scheduled-06-04-10")
    assert (found.id, found.typed_as) == ("scheduled-06-04-10-2", "scheduled-06-04-10")
    assert resolution(found, "scheduled-06-04-10")["exact"] is False


def test_a_suffix_left_off_with_several_candidates_is_refused_naming_them_with_their_times(store):
    """`-2` and `-3` and no backup of the typed id: nothing is chosen (exit 3), both are named with times."""
    put_backup(store, "scheduled-06-04-10-2", "2026-06-04T10:20:00-07:00")
    put_backup(store, "scheduled-06-04-10-3", "2026-06-04T10:40:00-07:00")
    put_backup(store, "scheduled-06-04-10-4", "2026-06-04T10:50:00-07:00", manifest=False)
    with pytest.raises(AmbiguousBackupError) as caught:
        find_backup(store, "scheduled-06-04-10")
    error = caught.value
    assert error.exit_code == 3 and "could mean 2 backups" in error.message
    assert [c.id for c in error.candidates] == ["scheduled-06-04-10-2", "scheduled-06-04-10-3"]
    assert error.detail == ("candidates:\n"
                            "  scheduled-06-04-10-2   complete, started 2026-06-04T10:20:00-07:00\n"
                            "  scheduled-06-04-10-3   complete, started 2026-06-04T10:40:00-07:00")


def test_an_incomplete_exact_id_is_refused_even_beside_a_complete_sibling(store):
    """The typed id is an incomplete backup: refused as incomplete, naming the complete sibling; never swapped."""
    put_backup(store, "scheduled-12-01-09", "2026-12-01T09:00:05-08:00", manifest=False)
    put_backup(store, "scheduled-12-01-09-2", "2026-12-01T09:40:00-08:00")
    with pytest.raises(BackupNotFoundError) as caught:
        find_backup(store, "scheduled-12-01-09")
    assert "scheduled-12-01-09 is incomplete" in caught.value.message
    assert caught.value.exit_code == 1
    assert caught.value.detail.startswith("another backup this id could stand for:\n  scheduled-12-01-09-2 ")


def test_flat_legacy_nested_legacy_and_a_suffixed_backup_of_ours_never_stand_in_for_each_other(store):
    """The old tool's flat `scheduled-06-04-10`, its nested `scheduled/06-04-10` and our `-2` (allocated beside
    the flat one): each printed id means its own; once the flat one expires, `scheduled-06-04-10` could mean
    either of the others and is refused; once only the nested one is left, it is that one."""
    put_legacy(store, "scheduled-06-04-10", "flat")
    put_legacy(store, "scheduled/06-04-10", "nested")
    put_backup(store, "scheduled-06-04-10-2", "2026-06-04T10:30:00-07:00")
    flat = find_backup(store, "scheduled-06-04-10")
    assert flat.legacy and [t.table for t in flat.legacy_tables] == ["flat"]
    assert set(flat.others) == {"scheduled-06-04-10-2", "scheduled/06-04-10"}
    nested = find_backup(store, "scheduled/06-04-10")
    assert [t.table for t in nested.legacy_tables] == ["nested"] and nested.typed_as == ""
    assert find_backup(store, "scheduled-06-04-10-2").manifest.id == "scheduled-06-04-10-2"
    store.delete_objects(["backups/scheduled-06-04-10/public-flat.dump"])  # the 60-day expiry
    with pytest.raises(AmbiguousBackupError) as caught:
        find_backup(store, "scheduled-06-04-10")
    assert {c.id for c in caught.value.candidates} == {"scheduled-06-04-10-2", "scheduled/06-04-10"}
    assert "legacy (old tool), started " in caught.value.detail
    store.delete_objects([k.key for k in store.list_objects("backups/scheduled-06-04-10-2/")])
    only = find_backup(store, "scheduled-06-04-10")
    assert (only.id, only.typed_as) == ("scheduled/06-04-10", "scheduled-06-04-10")


def test_a_complete_backup_of_ours_wins_over_the_nested_legacy_id_typed_with_a_dash(store):
    """Our `scheduled-06-04-10` and the old tool's nested `scheduled/06-04-10`: the dashed id is ours."""
    put_backup(store, "scheduled-06-04-10", "2026-06-04T10:00:00-07:00")
    put_legacy(store, "scheduled/06-04-10")
    ours = find_backup(store, "scheduled-06-04-10")
    assert not ours.legacy and ours.others == ("scheduled/06-04-10",)
    assert find_backup(store, "scheduled/06-04-10").legacy


def test_a_half_written_backup_of_ours_is_incomplete_not_legacy(store):
    """Dumps and privileges.json but no schema.dump or manifest (a run killed halfway): incomplete in
    `list` and refused as such, never restored as if the old tool had written it."""
    store.put_bytes(layout.table_key("daily-06-04", "public", "t"), b"dump")
    store.put_bytes(layout.privileges_key("daily-06-04"), b"{}")
    [summary] = catalog.list_backups(store)
    assert (summary.complete, summary.legacy) == (False, False)
    with pytest.raises(BackupNotFoundError) as caught:
        find_backup(store, "daily-06-04")
    assert "incomplete" in caught.value.message


def test_a_prefix_of_another_id_does_not_match_it(store):
    """`scheduled-06-04` is not an id of the scheduled form: it never matches `scheduled-06-04-10`."""
    put_backup(store, "scheduled-06-04-10", "2026-06-04T10:00:00-07:00")
    with pytest.raises(BackupNotFoundError) as caught:
        find_backup(store, "scheduled-06-04")
    assert "scheduled-06-04-10" in caught.value.detail


def test_newest_complete_wins_over_an_incomplete_sibling(store):
    """A newer sibling without a manifest is ignored: only complete backups are restorable."""
    put_backup(store, "daily-06-04", "2025-06-04T20:00:00-07:00")
    put_backup(store, "daily-06-04-2", "2026-06-04T20:00:00-07:00", manifest=False)
    assert find_backup(store, "daily-06-04").id == "daily-06-04"


def test_incomplete_backup_is_refused_with_nearest(store):
    """A backup of ours without a manifest is refused as incomplete, naming complete alternatives."""
    put_backup(store, "daily-06-03", "2026-06-03T20:00:00-07:00")
    put_backup(store, "daily-06-04", "2026-06-04T20:00:00-07:00", manifest=False)
    with pytest.raises(BackupNotFoundError) as caught:
        find_backup(store, "daily-06-04")
    assert "incomplete" in caught.value.message and "daily-06-03" in caught.value.detail


def test_unknown_id_lists_nearest_complete_same_kind_first(store):
    """The not-found error names the nearest complete backups, same kind first."""
    put_backup(store, "daily-06-04", "2026-06-04T20:00:00-07:00")
    put_backup(store, "scheduled-06-04-12", "2026-06-04T12:00:00-07:00")
    put_backup(store, "initial-202606041030", "2026-06-04T10:30:00-07:00")
    with pytest.raises(BackupNotFoundError) as caught:
        find_backup(store, "scheduled-06-04-11")
    assert caught.value.detail.startswith("nearest complete backups: scheduled-06-04-12")
    assert nearest_complete(store, "zzz", n=2) and len(nearest_complete(store, "zzz", n=2)) == 2


def test_legacy_flat_and_nested_layouts(store):
    """Old-tool dumps without manifest or schema.dump are legacy, flat or nested, typed either way."""
    store.put_bytes("backups/initial-202401010000/public-audit_access.dump", b"x" * 7)
    store.put_bytes("backups/scheduled/06-04-10/public-dissemination_general.dump", b"y")
    flat = find_backup(store, "initial-202401010000")
    assert flat.legacy and flat.legacy_tables[0].qualified == "public.audit_access"
    assert flat.legacy_tables[0].bytes == 7
    for typed in ("scheduled-06-04-10", "scheduled/06-04-10", "backups/scheduled/06-04-10/"):
        nested = find_backup(store, typed)
        assert nested.legacy and nested.prefix == "backups/scheduled/06-04-10/"
        assert [t.table for t in nested.legacy_tables] == ["dissemination_general"]


def test_ids_that_could_escape_the_prefix_are_refused(store):
    """Ids are key prefixes: `..` and odd characters never reach a listing."""
    for typed in ("../media", "daily-06-04/../x", "*"):
        with pytest.raises(BackupNotFoundError):
            find_backup(store, typed)


def test_restore_sql_quotes_every_name():
    """Names with quotes, spaces, capitals and non-ASCII letters are quoted in the restore's own SQL."""
    assert quote_ident('Odd Name "quoted" é') == '"Odd Name ""quoted"" é"'
    reset = build_reset_sql(["public", 'We"ird'])
    assert 'DROP SCHEMA IF EXISTS "We""ird" CASCADE;' in reset and "CREATE SCHEMA IF NOT EXISTS public;" in reset
    check = build_count_check_sql([("public", "it's", 3)])
    assert "FROM \"public\".\"it's\"" in check and "'public.it''s'" in check and "IF n <> 3" in check


ISO = "scheduled/2026-06-25T09:03:26-0400"


def put_legacy(store, legacy_id: str, *tables: str) -> None:
    """Dumps as the old tool leaves them: `backups/<id>/public-<table>.dump`, nothing else."""
    for table in tables or ("audit_audit",):
        store.put_bytes(f"backups/{legacy_id}/public-{table}.dump", b"PGDMP")


OURS = ("scheduled-12-01-09", "scheduled-12-01-09-2", "scheduled-06-04-10-2", "daily-12-01", "daily-12-01-2",
        "initial-202612010800", "deploy-202612010830", "on-demand-202612011015", "pre-restore-202612011100",
        "pre-restore-202612011100-2")
OLD_TOOL = ("scheduled-06-04-10", "scheduled/06-04-10", "scheduled/06-04-12", ISO)


def test_every_id_list_prints_resolves_as_printed(store):
    """Every shape this service and the old tool write, suffixed ids included: each id `list` prints
    resolves to exactly that backup, typed as printed, whatever else shares a form with it."""
    for n, backup_id in enumerate(OURS):
        put_backup(store, backup_id, f"2026-12-01T{n:02d}:00:00-08:00")
    for backup_id in OLD_TOOL:
        put_legacy(store, backup_id, "audit_audit", "dissemination_general")
    listed = {b.id: b for b in catalog.list_backups(store)}
    assert set(listed) == {*OURS, *OLD_TOOL}
    assert listed[ISO].legacy and listed[ISO].started_at == "2026-06-25T09:03:26-04:00"
    for backup_id in listed:
        found = find_backup(store, backup_id)
        assert (found.id, found.typed_as, found.prefix) == (backup_id, "", f"backups/{backup_id}/")
        assert found.legacy == listed[backup_id].legacy
        assert found.legacy or found.manifest.id == backup_id
    assert [t.table for t in find_backup(store, ISO).legacy_tables] == ["audit_audit", "dissemination_general"]
    assert find_backup(store, f"backups/{ISO}/").id == ISO  # pasted as a key prefix
    assert find_backup(store, "scheduled-2026-06-25T09:03:26-0400").id == ISO  # typed with a '-'


def test_a_shorter_iso_stamp_matches_when_unambiguous(store):
    """`scheduled/2026-06-25T09:03` and `scheduled/2026-06-25` find the one backup whose stamp starts so."""
    put_legacy(store, ISO)
    put_legacy(store, "scheduled/2026-06-24T21:03:02-0400")
    put_legacy(store, "daily/2026-06-25T00:10:00-0400")
    for typed in ("scheduled/2026-06-25T09:03", "scheduled/2026-06-25", "scheduled/2026-06-25T09"):
        assert find_backup(store, typed).id == ISO


def test_an_ambiguous_stamp_names_the_candidates(store):
    """Two backups start with the typed stamp: nothing is chosen and both are named with their times."""
    put_legacy(store, ISO)
    put_legacy(store, "scheduled/2026-06-25T11:03:30-0400")
    with pytest.raises(AmbiguousBackupError) as caught:
        find_backup(store, "scheduled/2026-06-25")
    assert "could mean 2 backups" in caught.value.message and caught.value.exit_code == 3
    assert caught.value.detail == (
        "candidates:\n"
        f"  {ISO}   legacy (old tool), started 2026-06-25T09:03:26-04:00\n"
        "  scheduled/2026-06-25T11:03:30-0400   legacy (old tool), started 2026-06-25T11:03:30-04:00")
    assert find_backup(store, "scheduled/2026-06-25T11").id == "scheduled/2026-06-25T11:03:30-0400"
    put_legacy(store, "scheduled/06-04-1")  # an id typed in full wins over the longer ones it starts
    put_legacy(store, "scheduled/06-04-10")
    assert find_backup(store, "scheduled/06-04-1").id == "scheduled/06-04-1"


def test_not_found_names_legacy_backups_when_the_bucket_holds_only_those(store):
    """With only the old tool's backups, the error names them instead of claiming the bucket is empty."""
    put_legacy(store, ISO)
    for typed in ("scheduled/2026-07-01", "scheduled-06-04-10", "daily-06-04"):
        with pytest.raises(BackupNotFoundError) as caught:
            find_backup(store, typed)
        assert "holds no backup at all" not in caught.value.detail
        assert caught.value.detail.endswith(f"nearest legacy backups (old tool): {ISO}")
    with pytest.raises(BackupNotFoundError) as empty:
        find_backup(MemoryObjectStore(), "daily-06-04")
    assert empty.value.detail == "the backups bucket holds no backup at all, complete or legacy"


def test_a_prefix_of_a_flat_or_dashed_id_does_not_match(store):
    """Only the '/' form matches a cut-short stamp: `scheduled-06-04` never picks `scheduled/06-04-10`."""
    put_legacy(store, "scheduled/06-04-10")
    with pytest.raises(BackupNotFoundError):
        find_backup(store, "scheduled-06-04")
