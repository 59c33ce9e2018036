"""The shipped alert rules speak only of metrics the service exports, with real jobs and labels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from service import jobs
from service.catalog import BackupSummary, Manifest
from service.metrics import OUTCOMES, SKIP_REASONS, Metrics

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus-alerts.yml"
METRIC_NAME = re.compile(r"\bfac_backup_[a-z0-9_]+\b")
MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"')
PROMQL_FUNCTIONS = {"time", "hour", "increase", "absent", "rate", "on", "and", "or"}


def exported_samples() -> tuple[set[str], dict[str, set[str]]]:
    """Every sample name the service exports, and the labels each carries."""
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    # Give the labelled gauges that start empty a value, so their samples show.
    metrics.set_next_runs({"scheduled_backup": None})
    metrics.observe_steps([jobs.StepResult("check_tables", "success", 1.0,
                                           {"counts": {"public.t": 1}, "missing": []})])
    manifest = Manifest("scheduled-01-02-08", "scheduled_backup", "2026-01-02T08:00:00-08:00",
                        "2026-01-02T08:10:00-08:00", "15.4", "15.4", "fac", ())
    metrics.observe_backups([BackupSummary(manifest.id, True, manifest=manifest)], 0.0)
    metrics.set_database_versions({"fac-db": ("15.20", "15.20")})
    metrics.init_disks({"fac-db": 0, "fac-snapshot-db": 0},
                       {"snapshot_refresh": "fac-snapshot-db", "restore": "fac-db"})
    names: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            names.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return names, labels


def exported_values(names: set[str], label: str) -> set[str]:
    """The values of `label` among the samples of the metrics `names` (pre-initialised label sets)."""
    metrics = Metrics(tuple(jobs.JOBS), registry=CollectorRegistry())
    return {sample.labels[label] for family in metrics.registry.collect() for sample in family.samples
            if sample.name in names and label in sample.labels}


def rules() -> list[dict]:
    data = yaml.safe_load(ALERTS.read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_the_required_alerts_are_shipped():
    """Stale scheduled backup, failed run, missing tables and stale daily backup all have a rule."""
    exprs = {rule["alert"]: rule["expr"] for rule in rules()}
    assert any("scheduled_backup" in e and "4 * 3600" in e for e in exprs.values())
    assert any('outcome="failure"' in e for e in exprs.values())
    assert any("fac_backup_check_missing_tables" in e for e in exprs.values())
    assert any("daily_backup" in e and "26 * 3600" in e for e in exprs.values())
    for rule in rules():
        assert rule["labels"]["severity"] in ("warning", "critical")
        assert rule["annotations"]["summary"]


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_every_metric_in_an_expression_is_exported(rule):
    """Each fac_backup_* name in an expression is a sample name service.metrics exports."""
    names, _ = exported_samples()
    used = set(METRIC_NAME.findall(rule["expr"]))
    assert used, "a rule should watch a fac_backup metric"
    assert used <= names, f"unknown metric(s): {used - names}"


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_label_matchers_name_real_labels_and_values(rule):
    """Label matchers use labels the metrics carry, with real job names and outcomes."""
    _, labels = exported_samples()
    used = set(METRIC_NAME.findall(rule["expr"]))
    allowed = set().union(*(labels[name] for name in used))
    for label, _op, value in MATCHER.findall(rule["expr"]):
        assert label in allowed, f"{label} is not a label of {used}"
        if label == "job":
            assert value in jobs.JOBS
        if label == "outcome":  # a job's outcome, or the notifications' and journal writes' own
            assert value in OUTCOMES or value in exported_values(used, "outcome")
        if label == "reason":
            assert value in SKIP_REASONS


@pytest.mark.parametrize("rule", rules(), ids=lambda r: r["alert"])
def test_expressions_are_balanced_and_use_known_functions(rule):
    """Parentheses and braces balance; every function called is one PromQL knows."""
    expr = rule["expr"]
    for opening, closing in ("()", "{}", "[]"):
        depth = 0
        for ch in expr:
            depth += (ch == opening) - (ch == closing)
            assert depth >= 0
        assert depth == 0
    called = set(re.findall(r"\b([a-z_]+)\s*\(", expr)) - set(METRIC_NAME.findall(expr))
    assert called <= PROMQL_FUNCTIONS, called
