"""The documentation cannot drift from the code: settings, metrics, jobs, alerts and links.

Each list the docs keep is compared both ways with what the code holds: a setting the service reads
but docs/configuration.md lacks fails, and so does one documented there that nothing reads any more.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml
from prometheus_client import CollectorRegistry

from service import jobs
from service.config import PREFIX, load_config
from service.errors import ConfigError
from service.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
SETTING = re.compile(r"\bFAC_BACKUP_[A-Z0-9_]*[A-Z0-9]\b")
METRIC = re.compile(r"\bfac_backup_[a-z0-9_]*[a-z0-9]\b")
ALERT = re.compile(r"\bFacBackup[A-Za-z]+\b")
# Read by the demo, the tests and the benchmarks, never by the service's configuration: documented in
# docs/development.md, and kept out of the service's settings table.
DEVELOPMENT_SETTINGS = {"FAC_BACKUP_TEST_DATABASE_URL"}


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(text: str) -> Iterator[str]:
    """The lines outside fenced code blocks."""
    fenced = False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            yield line


def section(path: Path, heading: str) -> str:
    """The text under `## heading` up to the next heading of that level or higher."""
    lines, inside = [], False
    for line in prose_lines(path.read_text(encoding="utf-8")):
        if re.match(r"#{1,2} ", line):
            if inside:
                break
            inside = line.strip() == f"## {heading}"
            continue
        if inside:
            lines.append(line)
    assert lines, f"{path.name} has no section '## {heading}'"
    return "\n".join(lines)


def first_cells(table_text: str) -> list[str]:
    """The first cell of every body row of the Markdown tables in `table_text`."""
    cells = []
    for line in table_text.splitlines():
        if line.startswith("|") and not re.match(r"\|\s*-", line):
            cells.append(line.split("|")[1].strip())
    return cells[1:] if cells else cells  # the header row


# Settings

class RecordingEnviron(Mapping):
    """An environment that remembers every name asked of it (get, [], in)."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        return self.values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def settings_load_config_reads() -> set[str]:
    """Every FAC_BACKUP_* name load_config asks the environment for.

    Some names are asked only when another is set (EMAIL_FROM once EMAIL_TO is), so every name
    asked is set and the configuration read again, until no new name appears.
    """
    values: dict[str, str] = {}
    while True:
        environ = RecordingEnviron(dict(values))
        try:
            load_config(environ)
        except ConfigError:
            pass  # the values are nonsense; what matters is what was asked
        asked = {name for name in environ.asked if name.startswith(PREFIX)}
        if asked <= values.keys():
            return asked
        values.update({name: "1" for name in asked - values.keys()})


def settings_in_source() -> set[str]:
    """FAC_BACKUP_* names in service/'s code: whole string literals, `PREFIX + "NAME"`, and f"{PREFIX}NAME"."""
    found = set()
    for path in (REPO / "service").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SETTING.fullmatch(node.value):
                found.add(node.value)
            elif (isinstance(node, ast.BinOp) and isinstance(node.left, ast.Name) and node.left.id == "PREFIX"
                  and isinstance(node.right, ast.Constant) and isinstance(node.right.value, str)):
                found.add(PREFIX + node.right.value)
            elif isinstance(node, ast.JoinedStr):
                for part, after in zip(node.values, node.values[1:], strict=False):
                    if (isinstance(part, ast.FormattedValue) and isinstance(part.value, ast.Name)
                            and part.value.id == "PREFIX" and isinstance(after, ast.Constant)):
                        name = re.match(r"[A-Z0-9_]*[A-Z0-9]", after.value)
                        if name:
                            found.add(PREFIX + name.group())
    return found


def settings_read() -> set[str]:
    return settings_load_config_reads() | settings_in_source()


def settings_documented() -> set[str]:
    """The names in the first column of docs/configuration.md's settings table."""
    cells = first_cells(section(DOCS / "configuration.md", "Settings"))
    return {name for cell in cells for name in SETTING.findall(cell)}


def test_every_setting_the_service_reads_is_in_the_settings_table():
    """A FAC_BACKUP_* setting that the service reads has a row in docs/configuration.md."""
    missing = settings_read() - DEVELOPMENT_SETTINGS - settings_documented()
    assert not missing, f"read by the service but not in docs/configuration.md's table: {sorted(missing)}"


def test_every_setting_in_the_table_is_still_read():
    """A row of docs/configuration.md names a setting the service still reads."""
    stale = settings_documented() - settings_read()
    assert not stale, f"in docs/configuration.md's table but read by nothing: {sorted(stale)}"


def test_every_setting_named_anywhere_in_the_docs_is_read():
    """No page names a FAC_BACKUP_* setting that nothing reads (a renamed or removed one)."""
    known = settings_read() | DEVELOPMENT_SETTINGS
    stale = {(path.name, name) for path in markdown_files()
             for name in SETTING.findall(path.read_text(encoding="utf-8")) if name not in known}
    assert not stale, f"settings named in the docs that nothing reads: {sorted(stale)}"


def test_the_test_settings_are_in_development_md_and_not_in_the_table():
    """Settings only the tests, the demo and the benchmarks read are explained in docs/development.md."""
    development = (DOCS / "development.md").read_text(encoding="utf-8")
    readers = "".join(p.read_text(encoding="utf-8") for p in (REPO / "tests" / "conftest.py",
                                                                REPO / "service" / "demo.py"))
    for name in DEVELOPMENT_SETTINGS:
        assert name in development, f"{name} is not explained in docs/development.md"
        assert name in readers, f"{name} is no longer read by the tests or the demo"
    assert not DEVELOPMENT_SETTINGS & settings_documented(), "test settings belong in docs/development.md"
    assert not DEVELOPMENT_SETTINGS & settings_load_config_reads(), "the service reads it: document it as a setting"


# Metrics

def metrics_exposed() -> tuple[set[str], set[str]]:
    """The names as operators see them (counters with _total), and every name a sample may carry."""
    registry = CollectorRegistry()
    Metrics(tuple(jobs.JOBS), registry=registry)
    names, samples = set(), set()
    for family in registry.collect():
        suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
        names.add(family.name + suffix)
        samples |= {family.name + s for s in ("", "_total", "_created", "_bucket", "_count", "_sum", "_info")}
    return names, samples


def test_every_metric_is_in_metrics_md():
    """Each metric the service registers is named in docs/metrics.md's table, as /metrics shows it."""
    names, _ = metrics_exposed()
    documented = set(METRIC.findall(section(DOCS / "metrics.md", "Metrics")))
    missing = names - documented
    assert not missing, f"registered but not in docs/metrics.md: {sorted(missing)}"


def test_every_metric_named_in_the_docs_exists():
    """No page names a fac_backup_* metric that the service does not register."""
    _, samples = metrics_exposed()
    unknown = {(path.name, name) for path in markdown_files()
               for name in METRIC.findall(path.read_text(encoding="utf-8")) if name not in samples}
    assert not unknown, f"metrics named in the docs that do not exist: {sorted(unknown)}"


def alerts_defined() -> set[str]:
    rules = yaml.safe_load((REPO / "deploy" / "prometheus-alerts.yml").read_text(encoding="utf-8"))
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def test_every_alert_is_in_metrics_md_and_every_alert_named_exists():
    """docs/metrics.md names each alert of deploy/prometheus-alerts.yml, and no page names one that is gone."""
    defined = alerts_defined()
    missing = defined - set(ALERT.findall((DOCS / "metrics.md").read_text(encoding="utf-8")))
    assert not missing, f"alerts not in docs/metrics.md: {sorted(missing)}"
    unknown = {(path.name, name) for path in markdown_files()
               for name in ALERT.findall(path.read_text(encoding="utf-8")) if name not in defined}
    assert not unknown, f"alerts named in the docs that do not exist: {sorted(unknown)}"


# Jobs

def jobs_in_readme_table() -> set[str]:
    cells = first_cells(section(README, "Jobs"))
    return {code.split()[0] for cell in cells for code in re.findall(r"`([^`]+)`", cell)}


def test_every_job_is_in_the_readme_jobs_table():
    """Each job of the registry has a line in the README's jobs table."""
    missing = set(jobs.JOBS) - jobs_in_readme_table()
    assert not missing, f"jobs missing from the README's table: {sorted(missing)}"


def test_every_job_in_the_readme_table_exists():
    """The README's jobs table names only jobs of the registry."""
    unknown = jobs_in_readme_table() - set(jobs.JOBS)
    assert not unknown, f"the README's table names jobs the registry lacks: {sorted(unknown)}"


# Links

def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path.read_text(encoding="utf-8")):
        match = re.match(r"#{1,6} (.+)", line)
        if match:
            slug = github_slug(match.group(1))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def relative_links(path: Path) -> Iterator[str]:
    for line in prose_lines(path.read_text(encoding="utf-8")):
        line = re.sub(r"`[^`]*`", "", line)  # code spans hold no links
        for target in re.findall(r"\]\(([^)\s]+)\)", line):
            if not re.match(r"[a-z]+:", target):
                yield target


def test_every_relative_link_reaches_a_file_and_its_heading():
    """Links between the README and docs/ (files, images, ../deploy/...) resolve, #anchors to a heading."""
    broken = []
    for path in markdown_files():
        for target in relative_links(path):
            file_part, _, anchor = target.partition("#")
            dest = (path.parent / file_part).resolve() if file_part else path
            if not dest.exists():
                broken.append(f"{path.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                broken.append(f"{path.name}: {target} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_the_readme_reads_at_once():
    """The README stays short (the rest lives in docs/) and links every page of docs/."""
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    linked = {Path(t.partition("#")[0]).name for t in relative_links(README)}
    unlinked = {p.name for p in DOCS.glob("*.md")} - linked
    assert not unlinked, f"docs the README does not point to: {sorted(unlinked)}"
