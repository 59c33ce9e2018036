"""The failure webhook, received by a real HTTP server on 127.0.0.1 started by the test."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from service import jobs, notify
from service.config import load_config
from service.errors import CheckError
from service.metrics import Metrics
from tests.unit.test_config import SECRET_DB, vcap

pytestmark = pytest.mark.integration


class Receiver:
    """A local webhook receiver: every POSTed body lands in `bodies`; `status` is its answer."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: queue.Queue = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server API
                length = int(self.headers.get("Content-Length", 0))
                receiver.bodies.put((self.headers.get("Content-Type"), json.loads(self.rfile.read(length))))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *_args):
                pass

        self.status = status
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[dict]:
        found = []
        while not self.bodies.empty():
            content_type, body = self.bodies.get_nowait()
            assert content_type == "application/json"
            found.append(body)
        return found


@pytest.fixture(autouse=True)
def fresh_memory():
    notify.forget_outcomes()
    yield
    notify.forget_outcomes()


def run(config, monkeypatch, step_result, metrics=None):
    """check_tables with its step replaced by `step_result` (an exception raises)."""
    def step(_ctx):
        if isinstance(step_result, BaseException):
            raise step_result
        return step_result

    monkeypatch.setitem(jobs.STEPS, "check_tables", step)
    return jobs.run_job(config, "check_tables", metrics=metrics, lock_guard=lambda _ctx: contextlib.nullcontext())


def failure():
    return CheckError("table public.audit is missing", detail=f"password={SECRET_DB}", hint="run migrations")


def test_a_failed_job_posts_one_slack_compatible_and_structured_body(monkeypatch):
    """A failure sends `text` plus job, outcome, error, hint, run_id and time; never the error's detail."""
    with Receiver() as receiver:
        config = load_config({"VCAP_SERVICES": vcap(), "FAC_BACKUP_WEBHOOK_URL": receiver.url})
        result = run(config, monkeypatch, failure())
        (body,) = receiver.received()
    assert result.outcome == "failure"
    assert body["text"].startswith("fac-backup: check_tables failed: table public.audit is missing")
    assert body["job"] == "check_tables" and body["outcome"] == "failure" and body["recovered"] is False
    assert body["error"] == "table public.audit is missing" and body["hint"] == "run migrations"
    assert body["run_id"] == result.run_id and body["time"].endswith("+00:00")
    assert SECRET_DB not in json.dumps(body) and "secret-token" not in json.dumps(body)


def test_the_body_names_the_cloud_gov_space_it_came_from(monkeypatch):
    """With VCAP_APPLICATION (as cloud.gov sets it), the text and a `space` field say which space failed."""
    app = json.dumps({"application_name": "fac-backup", "space_name": "production", "organization_name": "gsa"})
    with Receiver() as receiver:
        config = load_config({"VCAP_SERVICES": vcap(), "VCAP_APPLICATION": app,
                              "FAC_BACKUP_WEBHOOK_URL": receiver.url})
        run(config, monkeypatch, failure())
        (body,) = receiver.received()
    assert config.space == "production"
    assert body["space"] == "production"
    assert body["text"].startswith("fac-backup (production): check_tables failed: ")


def test_recovery_is_announced_once_and_successes_stay_quiet(monkeypatch):
    """After a failure, the first success notifies (recovered) and the next successes do not."""
    with Receiver() as receiver:
        config = load_config({"VCAP_SERVICES": vcap(), "FAC_BACKUP_WEBHOOK_URL": receiver.url})
        run(config, monkeypatch, {"counts": {}})
        run(config, monkeypatch, failure())
        run(config, monkeypatch, {"counts": {}})
        run(config, monkeypatch, {"counts": {}})
        bodies = receiver.received()
    assert [(b["outcome"], b["recovered"]) for b in bodies] == [("failure", False), ("success", True)]
    assert "succeeded again" in bodies[1]["text"]


def test_a_failing_webhook_is_logged_and_counted_and_never_fails_the_job(monkeypatch):
    """A receiver answering 500 (or nobody listening) leaves the job's outcome alone."""
    metrics = Metrics(("check_tables",), registry=CollectorRegistry())
    with Receiver(status=500) as receiver:
        config = load_config({"VCAP_SERVICES": vcap(), "FAC_BACKUP_WEBHOOK_URL": receiver.url})
        with capture_logs() as logs:
            ok = run(config, monkeypatch, {"counts": {}}, metrics)
            failed = run(config, monkeypatch, failure(), metrics)
    assert ok.outcome == "success" and failed.outcome == "failure" and failed.exit_code == 1
    warnings = [e for e in logs if e["event"] == "notify.failed"]
    assert len(warnings) == 1 and warnings[0]["reason"] == "HTTP 500"
    failed_webhooks = {"outcome": "failed", "channel": "webhook"}
    assert metrics.registry.get_sample_value("fac_backup_notifications_total", failed_webhooks) == 1
    dead = load_config({"VCAP_SERVICES": vcap(), "FAC_BACKUP_WEBHOOK_URL": receiver.url})
    assert run(dead, monkeypatch, failure(), metrics).outcome == "failure"
    assert metrics.registry.get_sample_value("fac_backup_notifications_total", failed_webhooks) == 2


def test_without_a_webhook_nothing_is_sent(monkeypatch):
    """No URL configured: failures are only logged, as before."""
    config = load_config({"VCAP_SERVICES": vcap()})
    with capture_logs() as logs:
        assert run(config, monkeypatch, failure()).outcome == "failure"
    assert not [e for e in logs if e["event"].startswith("notify.")]
