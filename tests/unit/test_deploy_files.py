"""The deploy files are complete for `cf push` and for a container build, and start the daemon."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
BINDINGS = {"fac-db", "fac-snapshot-db", "fac-private-s3", "backups"}


def manifest_app() -> dict:
    data = yaml.safe_load((REPO / "manifest.yml").read_text())
    assert len(data["applications"]) == 1
    return data["applications"][0]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines, current = [], ""
    for raw in (REPO / "Dockerfile").read_text().splitlines():
        if raw.strip().startswith("#") or not raw.strip():
            continue
        current += raw.rstrip("\\").strip() + " "
        if not raw.rstrip().endswith("\\"):
            keyword, _, rest = current.strip().partition(" ")
            lines.append((keyword.upper(), rest.strip()))
            current = ""
    return lines


def test_manifest_runs_one_instance_with_apt_then_python_buildpacks():
    """One instance; the apt buildpack (PostgreSQL client) comes before the python buildpack."""
    app = manifest_app()
    assert app["instances"] == 1
    assert app["buildpacks"] == ["apt_buildpack", "python_buildpack"]
    assert str(app["memory"]).endswith(("M", "G")) and str(app["disk_quota"]).endswith(("M", "G"))


def test_manifest_health_check_route_bindings_and_settings():
    """HTTP health check on /healthz, an apps.internal route, the four bindings, schedule variables."""
    app = manifest_app()
    assert app["health-check-type"] == "http"
    assert app["health-check-http-endpoint"] == "/healthz"
    assert any(r["route"].endswith(".apps.internal") for r in app["routes"])
    assert set(app["services"]) == BINDINGS
    env = app["env"]
    assert env["FAC_BACKUP_TIMEZONE"] == "America/Los_Angeles"
    assert env["FAC_BACKUP_SCHEDULED_CRON"] == "0 6-18/2 * * *"
    assert "FAC_BACKUP_DAILY_CRON" in env
    assert all(k.startswith("FAC_BACKUP_") for k in env)
    assert "FAC_BACKUP_PG_BIN" not in env  # it would pin one major
    assert env["FAC_BACKUP_PG_ROOT"].endswith("/apt/usr/lib/postgresql")


SPACES = ("dev", "preview", "staging", "production")
# FAC's Terraform (REFERENCE section 7): production's fac-db 200 GB and fac-snapshot-db 75 GB; 50 GB
# each in the other spaces.
STORAGE_GB = {"production": (200, 75), "dev": (50, 50), "preview": (50, 50), "staging": (50, 50)}
VARIABLE = re.compile(r"\(\((\w+)\)\)")


def space_vars(space: str) -> dict:
    return yaml.safe_load((REPO / "deploy" / "vars" / f"{space}.yml").read_text())


def manifest_for(space: str) -> dict:
    """The manifest's app as `cf push --vars-file deploy/vars/<space>.yml` makes it."""
    values = space_vars(space)
    text = VARIABLE.sub(lambda m: str(values[m.group(1)]), (REPO / "manifest.yml").read_text())
    return yaml.safe_load(text)["applications"][0]


def test_manifest_settings_are_accepted_by_the_service():
    """The manifest's env, with each space's variables, passes the service's own configuration checks
    (schedules included)."""
    from service.config import load_settings
    from service.scheduler import parse_schedules

    for space in SPACES:
        env = {k: str(v) for k, v in manifest_for(space)["env"].items()}
        env.pop("FAC_BACKUP_PG_ROOT")  # a directory that exists only on cloud.gov
        problems: list[str] = []
        settings = load_settings(env, problems)
        assert problems == [], space
        assert set(parse_schedules(settings)) >= {"scheduled_backup", "daily_backup"}


def test_each_space_pushes_with_its_own_name_and_its_databases_storage():
    """deploy/vars/<space>.yml gives every variable manifest.yml uses, the space's own name, and the
    storage FAC's Terraform gives its databases; the manifest sets both storage settings from them."""
    used = set(VARIABLE.findall((REPO / "manifest.yml").read_text()))
    assert {"env", "fac_db_storage_gb", "snapshot_db_storage_gb"} <= used
    assert sorted(p.stem for p in (REPO / "deploy" / "vars").glob("*.yml")) == sorted(SPACES)
    for space in SPACES:
        values = space_vars(space)
        assert set(values) == used, space
        assert values["env"] == space
        assert (values["fac_db_storage_gb"], values["snapshot_db_storage_gb"]) == STORAGE_GB[space]
        env = manifest_for(space)["env"]
        assert (env["FAC_BACKUP_FAC_DB_STORAGE_GB"], env["FAC_BACKUP_SNAPSHOT_DB_STORAGE_GB"]) == STORAGE_GB[space]
        assert manifest_for(space)["routes"][0]["route"] == f"fac-backup-{space}.apps.internal"


def test_apt_yml_installs_a_client_for_every_major_cloud_gov_offers():
    """apt.yml installs postgresql-client-15 to -18 from the PostgreSQL repository (with its key)."""
    apt = yaml.safe_load((REPO / "apt.yml").read_text())
    assert apt["packages"] == [f"postgresql-client-{major}" for major in (15, 16, 17, 18)]
    assert any("apt.postgresql.org" in repo for repo in apt["repos"])
    assert apt["keys"]


def test_procfile_execs_the_daemon_so_sigterm_reaches_it():
    """Procfile: `web: exec python -m service daemon`."""
    assert (REPO / "Procfile").read_text().strip() == "web: exec python -m service daemon"
    assert (REPO / "runtime.txt").read_text().strip().startswith("python-3.11")
    assert (REPO / "requirements.txt").exists()


def test_dockerfile_has_the_required_instructions():
    """Slim Python 3.11 base, postgresql-client-15 to -18 from PGDG, a non-root user, exec-form entry point."""
    instructions = dockerfile_instructions()
    keywords = [k for k, _ in instructions]
    args = dict(reversed(instructions))  # first occurrence of each
    assert keywords[0] == "FROM" and args["FROM"].startswith("python:3.11-slim")
    assert any(k == "RUN" and all(f"postgresql-client-{m}" in a for m in (15, 16, 17, 18))
               and "--no-install-recommends" in a and "apt.postgresql.org" in a for k, a in instructions)
    assert any(k == "RUN" and "useradd" in a for k, a in instructions)
    user = [a for k, a in instructions if k == "USER"]
    assert user and user[-1] not in ("root", "0")
    assert keywords.index("USER") > max(i for i, (k, _) in enumerate(instructions) if k == "RUN")
    assert "FAC_BACKUP_PG_ROOT=/usr/lib/postgresql" in args["ENV"] and "FAC_BACKUP_PG_BIN" not in args["ENV"]
    for k, a in instructions:
        if k in ("ENTRYPOINT", "CMD"):
            assert a.startswith("["), f"{k} must use the exec form so signals reach Python"
    assert {"COPY", "WORKDIR", "EXPOSE", "ENTRYPOINT", "CMD"} <= set(keywords)


def test_dockerfile_command_is_a_working_service_command():
    """ENTRYPOINT + CMD is `python -m service daemon`, and that command parses here."""
    instructions = dict(dockerfile_instructions())
    argv = yaml.safe_load(instructions["ENTRYPOINT"]) + yaml.safe_load(instructions["CMD"])
    assert argv == ["python", "-m", "service", "daemon"]
    procfile = shlex.split((REPO / "Procfile").read_text().split(":", 1)[1])
    assert procfile[1:] == argv
    done = subprocess.run([sys.executable, *argv[1:], "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "daemon" in done.stdout


def test_dockerignore_keeps_the_image_small():
    """.dockerignore leaves out the virtualenv, git metadata and tests."""
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", "tests"} <= set(ignored)


def test_copied_paths_exist():
    """Everything the Dockerfile copies exists in the repository."""
    for keyword, args in dockerfile_instructions():
        if keyword == "COPY":
            for source in args.split()[:-1]:
                assert (REPO / source).exists(), source
