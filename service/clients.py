"""Which PostgreSQL client programs serve which servers: discovery and the per-operation choice.

cloud.gov's databases may run any major from 15 to 18, and fac-db and
fac-snapshot-db may differ. Several client majors are installed side by side
(`<root>/<major>/bin`, the PGDG layout that apt and the apt buildpack create)
and each operation picks, for its pair of servers, the programs that give an
exact result. The rules come from measurements (PostgreSQL 15.20 and 18.6
servers and clients), not from "the newest client reads everything":

- A backup's pg_dump is of the server's own major. pg_dump 18 against a 15.20
  server writes `ALTER COLUMN ... SET (pg_attver=...)` for every column, which
  18 servers reject, and its archive needs pg_restore 18, whose output starts
  with `SET transaction_timeout`, which 15 servers reject: such a backup could
  not be restored onto the server it came from.
- A copy or a restore runs the source's major end to end (pg_dump,
  pg_restore, the source psql): pg_dump 15 + pg_restore 15 definitions load
  into an 18 server, and the copy's fingerprint equals the source's.
- A target older than the source is refused before anything is touched: an
  older pg_restore cannot read a newer archive, and a newer one writes
  settings and syntax the older server rejects.
- The psql that feeds a target is of the target's major when installed (any
  psql sends plain SQL to any supported server; the same major is simply the
  pairing that is tested).

FAC_BACKUP_PG_BIN names one directory and overrides discovery; otherwise
FAC_BACKUP_PG_ROOT (default /usr/lib/postgresql) is searched, then PATH.
"""

from __future__ import annotations

import glob
import os
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

from service.errors import ClientMissingError, VersionRefusedError
from service.pgtools import parse_program_version

DEFAULT_ROOT = "/usr/lib/postgresql"
PROGRAMS = ("pg_dump", "pg_restore", "psql")


@dataclass(frozen=True, order=True)
class Client:
    """One installed client major: its programs live in `bin_dir` (None: found on PATH)."""

    major: int
    version: str
    bin_dir: str | None = None

    def program(self, name: str) -> str:
        return str(Path(self.bin_dir) / name) if self.bin_dir else name


@dataclass(frozen=True)
class CopyClients:
    """The programs of one database-to-database copy or restore."""

    source: Client  # pg_dump, pg_restore and the producers' psql: the source's major
    target: Client  # the psql that feeds the target


_cache: dict[tuple, tuple[Client, ...]] = {}
_cache_lock = threading.Lock()


def _probe(program: str) -> tuple[int, str] | None:
    try:
        out = subprocess.run([program, "--version"], capture_output=True, timeout=30, check=True).stdout
        return parse_program_version(out.decode("utf-8", "replace"))
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


def _stamp(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0


def installed_clients(settings) -> tuple[Client, ...]:
    """Every client major available to this process, oldest first (probed once per location)."""
    override = getattr(settings, "pg_bin_dir", None)
    root = getattr(settings, "pg_root", None) or DEFAULT_ROOT
    if override:
        dirs = [override]
    else:
        dirs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(root, "*", "bin", "pg_dump")))
    key = tuple((d, _stamp(os.path.join(d, "pg_dump"))) for d in dirs) or (("PATH", os.environ.get("PATH", "")),)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    found: dict[int, Client] = {}
    for d in dirs:
        probed = _probe(str(Path(d) / "pg_dump"))
        if probed is not None and probed[0] not in found:
            found[probed[0]] = Client(probed[0], probed[1], d)
    if not dirs:
        probed = _probe("pg_dump")
        if probed is not None:
            found[probed[0]] = Client(probed[0], probed[1], None)
    clients = tuple(sorted(found.values()))
    with _cache_lock:
        _cache[key] = clients
    return clients


def describe_installed(clients: tuple[Client, ...]) -> str:
    return ", ".join(c.version for c in clients) or "none"


def client_for_major(clients: tuple[Client, ...], major: int) -> Client | None:
    """The installed client of exactly this major, if any."""
    return next((c for c in clients if c.major == major), None)


def _missing(clients, major: int, server_text: str, binding: str, why: str) -> ClientMissingError:
    older = clients and all(c.major < major for c in clients)
    return ClientMissingError(
        f"no PostgreSQL {major} client is installed for {binding} (PostgreSQL {server_text}); "
        f"installed: {describe_installed(clients)}" + (", all older than the server" if older else ""),
        detail=why,
        hint=f"install postgresql-client-{major} (apt.yml, Dockerfile) and redeploy, "
             "or point FAC_BACKUP_PG_BIN at its bin directory; nothing was touched")


def choose_dump_client(clients: tuple[Client, ...], server_major: int, server_text: str,
                       binding: str = "the database") -> Client:
    """pg_dump for a backup: the server's own major, so the backup restores onto that server."""
    chosen = client_for_major(clients, server_major)
    if chosen is None:
        raise _missing(clients, server_major, server_text, binding,
                       "a backup's pg_dump must be of the server's major version: an older one refuses "
                       "the server, a newer one writes archives that only a newer server accepts")
    return chosen


def choose_copy_clients(clients: tuple[Client, ...], source: tuple[int, str], target: tuple[int, str], *,
                        source_name: str, target_name: str, what: str = "copy") -> CopyClients:
    """Programs for moving `source`'s contents into `target` ((major, version text) each).

    Refuses (VersionRefusedError) a target of an older major than the source.
    """
    (s_major, s_text), (t_major, t_text) = source, target
    if t_major < s_major:
        raise VersionRefusedError(
            f"refusing to {what} {source_name} (PostgreSQL {s_text}) into {target_name} "
            f"(PostgreSQL {t_text}): the target's major version is older than the source's; "
            "nothing was touched",
            detail="definitions written by a newer PostgreSQL may use settings and syntax an older server "
                   "rejects, and an older pg_restore cannot read a newer archive, so the result "
                   "would not be exact",
            hint=f"upgrade {target_name} to PostgreSQL {s_major} or later (cloud.gov: "
                 f"cf update-service with a newer engine version), or restore a backup taken while "
                 f"the source ran PostgreSQL {t_major}")
    source_client = client_for_major(clients, s_major)
    if source_client is None:
        raise _missing(clients, s_major, s_text, source_name,
                       f"a {what} reads {source_name} with its own major's pg_dump and pg_restore")
    return CopyClients(source=source_client, target=client_for_major(clients, t_major) or source_client)


def choose_restore_clients(clients: tuple[Client, ...], *, dumped_by: str | None, source_server: str | None,
                           target: tuple[int, str], backup_id: str, target_name: str) -> CopyClients:
    """Programs for restoring a backup whose archives `dumped_by` (pg_dump version text) wrote from a
    `source_server` (version text) into `target`; legacy backups (both None) use the target's major."""
    t_major, _ = target
    majors = [int(v.split(".")[0]) for v in (dumped_by, source_server) if v]
    if not majors:
        chosen = client_for_major(clients, t_major)
        if chosen is None:
            raise _missing(clients, t_major, target[1], target_name, "a legacy restore uses the target's major")
        return CopyClients(source=chosen, target=chosen)
    s_major = max(majors)
    s_text = source_server or dumped_by or str(s_major)
    return choose_copy_clients(clients, (s_major, s_text), target, source_name=f"backup {backup_id}",
                               target_name=target_name, what="restore")


def choose_reader(clients: tuple[Client, ...], dumped_by: str | None) -> Client:
    """pg_restore for reading an archive's table of contents (no server involved): the archive's
    own major when installed, else the newest (a pg_restore reads every older archive)."""
    if not clients:
        raise ClientMissingError("no PostgreSQL client programs are installed",
                                 hint="install postgresql-client-15 or newer, or set FAC_BACKUP_PG_BIN")
    if dumped_by:
        major = int(dumped_by.split(".")[0])
        exact = client_for_major(clients, major)
        if exact is not None:
            return exact
        if clients[-1].major < major:
            raise _missing(clients, major, dumped_by, "this backup's archives",
                           "a pg_restore cannot read archives written by a newer pg_dump")
    return clients[-1]


def compression_option(client: Client, method: str, level: int) -> tuple[str, str]:
    """(`--compress` value, what the manifest records) for `client`'s pg_dump.

    gzip at a level is what every pg_dump knows; lz4 and zstd need pg_dump 16
    or later built with them. An unsupported method falls back to gzip at the
    same level, and the manifest records what was used.
    """
    if method == "none" or level == 0:
        return "0", "none"
    if method != "gzip" and supports_compression(client, method):
        return f"{method}:{level}", f"{method}:{level}"
    return str(level), f"gzip:{level}"


_support: dict[tuple[str, str], bool] = {}


def supports_compression(client: Client, method: str) -> bool:
    """Whether this pg_dump build accepts `--compress=METHOD` (asked without any server)."""
    if client.major < 16:
        return False
    key = (client.program("pg_dump"), method)
    if key not in _support:
        # pg_dump checks the compression specification before it connects: with no server to
        # reach, an unsupported method says so and a supported one fails on the connection.
        env = {"PATH": os.environ.get("PATH", ""), "PGHOST": "/nonexistent-fac-backup-probe",
               "PGCONNECT_TIMEOUT": "1", "PGDATABASE": "probe"}
        try:
            done = subprocess.run([key[0], f"--compress={method}:1", "--schema-only", "--no-password"],
                                  env=env, capture_output=True, timeout=30)
            _support[key] = b"compression" not in done.stderr.lower()
        except (OSError, subprocess.SubprocessError):
            _support[key] = False
    return _support[key]


def probe_server(db, sslmode: str) -> tuple[int, str]:
    """(major, version text) of the server behind binding `db` (a short connection of its own)."""
    from service.database import connect, server_version

    with connect(db, sslmode=sslmode, autocommit=True) as conn:
        return server_version(conn)


def plan_copy(settings, source, target, *, what: str = "copy") -> CopyClients:
    """Check both ends of a copy from binding `source` into binding `target` and choose its programs;
    raises before anything is touched when no exact copy is possible."""
    return choose_copy_clients(installed_clients(settings), probe_server(source, settings.pg_sslmode),
                               probe_server(target, settings.pg_sslmode), source_name=source.name,
                               target_name=target.name, what=what)


def check_dump_client(settings, db) -> Client:
    """The pg_dump a backup of binding `db` will use; raises when none is installed."""
    major, text = probe_server(db, settings.pg_sslmode)
    return choose_dump_client(installed_clients(settings), major, text, db.name)


def archive_reader(settings, manifest) -> str:
    """The pg_restore that lists the archives of a backup (`manifest` None: a legacy backup)."""
    return choose_reader(installed_clients(settings),
                         manifest.pg_dump_version if manifest else None).program("pg_restore")


def read_versions(config, log=None) -> dict[str, tuple[str, str]]:
    """binding name -> (server version, client version or "none") for every bound database, for
    fac_backup_database_version_info. A binding that cannot be reached is left out (and logged)."""
    from service.errors import ServiceError

    installed = installed_clients(config.settings)
    bindings = [config.fac_db, config.snapshot_db, getattr(config, "restore_test_db", None)]
    versions: dict[str, tuple[str, str]] = {}
    for db in (b for b in bindings if b is not None):
        try:
            major, text = probe_server(db, config.settings.pg_sslmode)
        except ServiceError as exc:
            if log is not None:
                log.warning("versions.unreachable", binding=db.name, error=exc.message)
            continue
        client = client_for_major(installed, major)
        versions[db.name] = (text, client.version if client else "none")
        if client is None and log is not None:
            log.error("versions.no_client", binding=db.name, server_version=text,
                      installed=describe_installed(installed),
                      hint=f"install postgresql-client-{major} (apt.yml, Dockerfile) and redeploy")
    return versions
