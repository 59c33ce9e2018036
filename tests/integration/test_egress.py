"""Notifications from a restricted-egress space, against real servers on loopback (tests.egress).

The world is production's: the webhook's host is a name only the egress proxy resolves (a direct
connection cannot reach it), the proxy speaks TLS on its own port and wants Basic credentials, its
allowlist holds the webhook and nothing else, the webhook is HTTPS with a certificate from a CA
the platform's directory (CF_SYSTEM_CERT_PATH) holds, mail goes to an SMTP server bound as
`smtp-proxy-creds`, and S3 is the moto server while HTTPS_PROXY and its friends name a proxy.
"""

from __future__ import annotations

import contextlib
import email
import email.policy
import json
import socket
import time
from dataclasses import dataclass

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from structlog.testing import capture_logs

from service import jobs, notify
from service.config import load_config
from service.errors import CheckError
from service.metrics import Metrics
from service.sandbox import write_vcap_file
from service.storage import S3ObjectStore
from tests.egress import Authority, ForwardProxy, MailServer, SilentServer, TricklingServer, WebhookReceiver
from tests.unit.test_config import vcap

pytestmark = pytest.mark.integration

HOOK_HOST = "hooks.test"  # resolvable by the proxy only, as the internet is from a restricted space
PROXY_PASSWORD = "proxy-pass-Yw41c"
PRODUCTION = json.dumps({"application_name": "fac-backup", "space_name": "production"})
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "NO_PROXY", "no_proxy")


@dataclass
class World:
    trust_dir: str
    authority: Authority
    receiver: WebhookReceiver
    proxy: ForwardProxy  # the egress proxy: TLS, as on its port 61443
    mail: MailServer

    @property
    def webhook(self) -> str:
        return self.receiver.url(HOOK_HOST)

    def proxy_binding(self, password: str = PROXY_PASSWORD) -> dict:
        uri = self.proxy.url(password)
        return {"name": "https-proxy-creds", "label": "user-provided", "credentials": {
            "https_uri": uri, "http_uri": uri, "domain": "127.0.0.1", "https_port": self.proxy.port,
            "username": self.proxy.username, "password": password}}

    def smtp_binding(self) -> dict:
        return {"name": "smtp-proxy-creds", "label": "user-provided",
                "credentials": {"domain": "127.0.0.1", "port": str(self.mail.port)}}

    def env(self, **extra: str) -> dict:
        """Notification settings as production's manifest sets them."""
        return {"FAC_BACKUP_WEBHOOK_URL": self.webhook, "CF_SYSTEM_CERT_PATH": self.trust_dir,
                "FAC_BACKUP_EMAIL_TO": "fac-team@example.com", "FAC_BACKUP_EMAIL_FROM": "fac-backup@example.com",
                "VCAP_APPLICATION": PRODUCTION, **extra}


@pytest.fixture
def world(tmp_path, monkeypatch):
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    notify.forget_outcomes()
    authority = Authority(tmp_path / "cf-system-certificates", tmp_path / "tls")
    with WebhookReceiver(authority.server_context(HOOK_HOST)) as receiver, \
            ForwardProxy("fac", PROXY_PASSWORD, tls=authority.server_context("127.0.0.1"),
                         hosts={HOOK_HOST: "127.0.0.1"}, allow=(f"{HOOK_HOST}:{receiver.port}",)) as proxy, \
            MailServer() as mail:
        yield World(str(tmp_path / "cf-system-certificates"), authority, receiver, proxy, mail)
    notify.forget_outcomes()


def environ_with(box, *bindings: dict, **env: str) -> dict:
    """The sandbox's environment with user-provided `bindings` added to its VCAP_SERVICES."""
    services = box.vcap()
    services.setdefault("user-provided", []).extend(bindings)
    environ = box.environ
    environ.update(FAC_BACKUP_VCAP_FILE=str(write_vcap_file(box.tmp, json.dumps(services))), **env)
    return environ


def requests(proxy: ForwardProxy) -> list[tuple[str, int]]:
    """(method and target, status) of each request the proxy saw (HTTP versions vary by Python)."""
    found = []
    for line in proxy.lines():
        request, _, status = line.partition('"')[2].rpartition('" ')
        found.append((request.rsplit(" HTTP/", 1)[0], int(status)))
    return found


def test_the_team_hears_of_a_failed_backup_and_a_restore_through_the_proxy_and_s3_never_uses_it(
        sample_db, world, monkeypatch):
    """With https-proxy-creds bound and every proxy variable naming another proxy: the webhook goes
    through the bound proxy by CONNECT (never the variables' one), S3 through neither, and the mail of
    the failed backup and of the restore reaches the relay bound as smtp-proxy-creds."""
    box, lock = sample_db, {"lock_guard": lambda _ctx: contextlib.nullcontext()}
    bindings = (world.proxy_binding(), world.smtp_binding())
    with ForwardProxy("fac", PROXY_PASSWORD) as operators:  # what an operator's HTTPS_PROXY names
        for name in PROXY_VARIABLES[:4]:
            monkeypatch.setenv(name, operators.url())
        monkeypatch.setenv("NO_PROXY", "apps.internal")
        config = load_config(environ_with(box, *bindings, **world.env()))
        box.credential_overrides["backups"] = {"secret_access_key": "wrong-secret"}
        broken = load_config(environ_with(box, *bindings, **world.env()))
        backup = jobs.run_job(config, "db_to_s3", **lock)
        failed = jobs.run_job(broken, "db_to_s3", **lock)
        restored = jobs.run_job(config, "s3_restore", (backup.steps[-1].figures.get("backup_id", "-"),),
                                options={"confirm": "production/fac-db"}, **lock)
        variables_proxy = operators.lines()
    assert variables_proxy == []  # neither S3 (the moto server) nor the webhook used HTTPS_PROXY's proxy
    assert (backup.outcome, failed.outcome, restored.outcome) == ("success", "failure", "success"), failed.error
    posts = world.receiver.received()
    assert [(b["job"], b["outcome"]) for _h, b in posts] == [("db_to_s3", "failure"), ("s3_restore", "success")]
    assert all("Proxy-Authorization" not in headers for headers, _b in posts)  # the proxy's, never the receiver's
    assert requests(world.proxy) == [(f"CONNECT {HOOK_HOST}:{world.receiver.port}", 200)] * 2
    (to_1, from_1, raw_1), (to_2, _f, raw_2) = world.mail.messages
    assert to_1 == to_2 == ["fac-team@example.com"] and from_1 == "fac-backup@example.com"
    first = email.message_from_bytes(raw_1, policy=email.policy.default)
    second = email.message_from_bytes(raw_2, policy=email.policy.default)
    assert first["Subject"] == "fac-backup (production): db_to_s3 failed"
    assert second["Subject"] == "fac-backup (production): s3_restore of production/fac-db succeeded"
    assert first.get_content_type() == "text/plain" and not first.is_multipart()
    body = first.get_content()
    assert body.startswith("fac-backup (production): db_to_s3 failed: ")
    assert ["run_id:", failed.run_id] in [line.split() for line in body.splitlines()]
    assert "wrong-secret" not in raw_1.decode() and PROXY_PASSWORD not in raw_1.decode()
    assert "confirmation:" in second.get_content() and "production/fac-db" in second.get_content()


def run_failing_check(config, monkeypatch, metrics=None):
    """check_tables with its step failing as a missing table would."""
    def step(_ctx):
        raise CheckError("table public.audit is missing", hint="run migrations")

    monkeypatch.setitem(jobs.STEPS, "check_tables", step)
    return jobs.run_job(config, "check_tables", metrics=metrics, lock_guard=lambda _ctx: contextlib.nullcontext())


def config_with(world, *bindings: dict, **env: str):
    services = json.loads(vcap())
    services["user-provided"] = list(bindings)
    return load_config({"VCAP_SERVICES": json.dumps(services), **world.env(**env)})


def test_a_wrong_proxy_password_is_a_clear_failure_that_names_no_secret(world, monkeypatch):
    """The proxy answers 407: `notify.failed` says the proxy refused the binding's credentials, the
    failed count goes up, the job's own outcome is untouched, and no password shows anywhere."""
    wrong = "wrong-pass-Kq03z"
    metrics = Metrics(("check_tables",), registry=CollectorRegistry())
    config = config_with(world, world.proxy_binding(password=wrong), FAC_BACKUP_EMAIL_TO="")
    assert wrong in config.secrets()
    with capture_logs() as logs:
        result = run_failing_check(config, monkeypatch, metrics)
    assert result.outcome == "failure" and result.exit_code == 1
    (warning,) = [e for e in logs if e["event"] == "notify.failed"]
    assert warning["channel"] == "webhook" and warning["reason"] == "proxy HTTP 407"
    assert warning["detail"] == (f"the proxy https://127.0.0.1:{world.proxy.port} refused the credentials of "
                                 "binding 'https-proxy-creds' (HTTP 407 Proxy Authentication Required)")
    assert "https-proxy-creds" in warning["hint"]
    assert requests(world.proxy) == [(f"CONNECT {HOOK_HOST}:{world.receiver.port}", 407)]
    assert metrics.registry.get_sample_value("fac_backup_notifications_total",
                                             {"outcome": "failed", "channel": "webhook"}) == 1
    shown = str(logs) + generate_latest(metrics.registry).decode() + str(result.error)
    assert wrong not in shown and PROXY_PASSWORD not in shown and "secret-token" not in shown
    assert world.receiver.received() == []


@pytest.mark.parametrize(("case", "reason", "says"), [
    ("not on the allowlist", "proxy HTTP 403", "refused to connect to hooks.test:"),
    ("untrusted certificate", "tls", "TLS certificate of the proxy https://127.0.0.1:"),
])
def test_the_proxy_refusing_a_webhook_is_named_for_what_it_is(world, monkeypatch, case, reason, says):
    """A destination the proxy's allowlist lacks (403), or a proxy whose certificate no trusted CA
    signed (the platform's CAs not given): each is logged as such, and the job ends as it would."""
    if case == "not on the allowlist":
        world.proxy.allow.clear()
        config = config_with(world, world.proxy_binding(), FAC_BACKUP_EMAIL_TO="")
    else:
        config = config_with(world, world.proxy_binding(), FAC_BACKUP_EMAIL_TO="", CF_SYSTEM_CERT_PATH="")
    with capture_logs() as logs:
        assert run_failing_check(config, monkeypatch).outcome == "failure"
    (warning,) = [e for e in logs if e["event"] == "notify.failed"]
    assert warning["reason"] == reason and says in warning["detail"], warning
    assert PROXY_PASSWORD not in str(logs)


@pytest.mark.parametrize("case", ["closed port", "unanswered connect"])
def test_a_proxy_that_cannot_be_reached_is_named_with_the_network_policy_hint(world, monkeypatch, case):
    """A proxy port nobody listens on, or one whose SYNs go unanswered (what a missing network policy
    looks like on cloud.gov): 'proxy unreachable' with the network-policy hint, never 'it said nothing'."""
    with contextlib.ExitStack() as stack:
        listener = socket.socket()
        stack.callback(listener.close)
        listener.bind(("127.0.0.1", 0))
        port = listener.getsockname()[1]
        if case == "closed port":
            listener.close()
        else:  # a backlog of 0 holding one connection: the kernel drops every further SYN
            listener.listen(0)
            queued = socket.create_connection(("127.0.0.1", port), timeout=2)
            stack.callback(queued.close)
        proxy = world.proxy_binding()
        uri = f"https://{world.proxy.username}:{PROXY_PASSWORD}@127.0.0.1:{port}"
        proxy["credentials"].update(https_uri=uri, http_uri=uri, https_port=port)
        config = config_with(world, proxy, FAC_BACKUP_EMAIL_TO="")
        with capture_logs() as logs:
            assert run_failing_check(config, monkeypatch).outcome == "failure"
    (warning,) = [e for e in logs if e["event"] == "notify.failed"]
    assert warning["reason"] == "proxy unreachable", warning
    assert warning["detail"].startswith(f"cannot reach the proxy https://127.0.0.1:{port}")
    assert "cf add-network-policy" in warning["hint"] and PROXY_PASSWORD not in str(logs)


def test_without_the_binding_the_environment_proxy_carries_notifications_only(sandbox, world, monkeypatch):
    """No https-proxy-creds: an http:// webhook goes to the environment's proxy as an absolute-URI
    request, while the media sync reaches S3 on each binding's fips_endpoint directly."""
    with WebhookReceiver() as plain, ForwardProxy("fac", PROXY_PASSWORD, hosts={HOOK_HOST: "127.0.0.1"},
                                                   allow=(f"{HOOK_HOST}:{plain.port}",)) as proxy:
        sandbox.media_store().put_bytes("excel/1.xlsx", b"workbook")
        fips = {"endpoint": "http://s3.invalid:9", "fips_endpoint": sandbox.s3.endpoint_url}
        sandbox.credential_overrides.update({"fac-private-s3": fips, "backups": fips})
        environ = environ_with(sandbox, **world.env(FAC_BACKUP_WEBHOOK_URL=plain.url(HOOK_HOST), FAC_BACKUP_EMAIL_TO="",
                                                    FAC_BACKUP_S3_FIPS="true"))
        for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
            monkeypatch.setenv(name, proxy.url())
            environ[name] = proxy.url()
        config = load_config(environ)
        assert config.backups.endpoint_url == sandbox.s3.endpoint_url  # the FIPS endpoint
        synced = jobs.run_job(config, "media_sync", lock_guard=lambda _ctx: contextlib.nullcontext())
        failed = run_failing_check(config, monkeypatch)
        posts = plain.received()
    assert requests(proxy) == [(f"POST http://{HOOK_HOST}:{plain.port}/hook/secret-token", 200)]
    assert synced.outcome == "success", synced.error
    assert S3ObjectStore(config.backups).get_bytes("excel/1.xlsx") == b"workbook"
    assert failed.outcome == "failure" and [b["job"] for _h, b in posts] == ["check_tables"]
    assert "Proxy-Authorization" not in posts[0][0]
    assert world.proxy.lines() == []


def test_a_host_named_in_no_proxy_is_reached_directly_even_with_the_binding(world, monkeypatch):
    """A webhook whose host no_proxy names (an apps.internal receiver, say) skips the bound proxy."""
    with WebhookReceiver(world.authority.server_context("127.0.0.1")) as direct:
        config = config_with(world, world.proxy_binding(), FAC_BACKUP_WEBHOOK_URL=direct.url("127.0.0.1"),
                             FAC_BACKUP_EMAIL_TO="", no_proxy="apps.internal,127.0.0.1")
        assert run_failing_check(config, monkeypatch).outcome == "failure"
        posts = direct.received()
    assert [b["job"] for _h, b in posts] == ["check_tables"]
    assert world.proxy.lines() == []


@pytest.mark.parametrize("fault", ["silent relay", "trickling relay", "trickling webhook", "silent proxy"])
def test_a_stuck_channel_holds_the_job_no_longer_than_the_notification_timeout(world, monkeypatch, fault):
    """A relay that accepts and never speaks, or one (or a webhook) that sends a byte at a time
    forever: the run ends within the 3 s timeout (plus margin), the stuck channel is logged as timed
    out, and the other channel, sent beside it, still arrives."""
    stuck_channel = "webhook" if fault in ("trickling webhook", "silent proxy") else "email"
    with (SilentServer() if fault.startswith("silent") else TricklingServer()) as stuck:
        if fault == "silent proxy":  # the egress proxy (TLS, as production binds it) accepts, then says nothing
            proxy = world.proxy_binding()
            uri = f"https://{world.proxy.username}:{PROXY_PASSWORD}@127.0.0.1:{stuck.port}"
            proxy["credentials"].update(https_uri=uri, http_uri=uri, https_port=stuck.port)
            settings, bindings = {}, (proxy, world.smtp_binding())
        elif stuck_channel == "email":
            settings = {"FAC_BACKUP_SMTP_HOST": "127.0.0.1", "FAC_BACKUP_SMTP_PORT": str(stuck.port)}
            bindings = (world.proxy_binding(),)
        else:
            settings = {"FAC_BACKUP_WEBHOOK_URL": f"http://127.0.0.1:{stuck.port}/hook"}
            bindings = (world.smtp_binding(),)
        config = config_with(world, *bindings, **settings)
        started = time.monotonic()
        with capture_logs() as logs:
            result = run_failing_check(config, monkeypatch)
        took = time.monotonic() - started
    assert result.outcome == "failure"
    assert took < notify.TIMEOUT_SECONDS + 1.5, took
    failures = {e["channel"]: e for e in logs if e["event"] == "notify.failed"}
    assert list(failures) == [stuck_channel] and failures[stuck_channel]["reason"] == "timeout"
    if stuck_channel == "email":  # the delivery ended itself at its deadline, not only the wait for it
        assert failures["email"]["detail"].startswith("the mail relay 127.0.0.1:"), failures
    if fault == "silent proxy":  # a timeout that names the proxy it went through
        assert "did not answer within 3.0 s: the proxy https://127.0.0.1:" in failures["webhook"]["detail"], failures
        assert PROXY_PASSWORD not in str(failures)
    sent = [e["channel"] for e in logs if e["event"] == "notify.sent"]
    assert sent == ["email" if stuck_channel == "webhook" else "webhook"]
