"""The shipped alert rules pass Prometheus' own checks: `promtool check rules` on the rules and
`promtool test rules` on every `deploy/prometheus-alerts*.test.yml` (series over time, asserting
when each alert fires and when it stays silent)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.tools import require_tool

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULE_TESTS = sorted(DEPLOY.glob("prometheus-alerts*.test.yml"))
RULE_FILES = sorted(set(DEPLOY.glob("prometheus-alerts*.yml")) - set(RULE_TESTS))


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([require_tool("promtool"), *args], cwd=DEPLOY, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.parametrize("rules_file", RULE_FILES, ids=lambda p: p.name)
def test_the_rules_pass_promtool_check_rules(rules_file):
    """`promtool check rules` accepts each deploy/prometheus-alerts*.yml (syntax, PromQL, templates)."""
    done = promtool("check", "rules", rules_file.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_rule_file_is_loaded_by_a_unit_test_file():
    """Each deploy/prometheus-alerts*.yml is loaded by at least one of the promtool test files."""
    import yaml

    loaded = {DEPLOY / name for f in RULE_TESTS for name in yaml.safe_load(f.read_text())["rule_files"]}
    assert DEPLOY / "prometheus-alerts.yml" in RULE_FILES
    assert set(RULE_FILES) <= loaded, f"rule files without tests: {set(RULE_FILES) - loaded}"


@pytest.mark.parametrize("tests_file", RULE_TESTS, ids=lambda p: p.name)
def test_alert_unit_tests_pass(tests_file):
    """`promtool test rules` passes: each alert fires when its tests say, and only then."""
    done = promtool("test", "rules", tests_file.name)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_exercised_by_a_firing_case():
    """Each alert of every rule file loaded by a test file is expected to fire at least once."""
    import yaml

    alerts, fired = set(), set()
    for tests_file in RULE_TESTS:
        spec = yaml.safe_load(tests_file.read_text())
        for rule_file in spec["rule_files"]:
            for group in yaml.safe_load((DEPLOY / rule_file).read_text())["groups"]:
                alerts.update(r["alert"] for r in group["rules"] if "alert" in r)
        for test in spec["tests"]:
            fired.update(case["alertname"] for case in test.get("alert_rule_test", [])
                         if case.get("exp_alerts"))
    assert alerts and alerts <= fired, f"alerts never shown firing: {sorted(alerts - fired)}"
