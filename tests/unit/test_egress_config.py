"""Notification egress settings: the proxy (binding or environment), no_proxy, the mail relay."""

from __future__ import annotations

import json

import pytest

from service import notify
from service.config import load_config
from service.egress import Egress, Proxy
from service.errors import ConfigError
from service.jobs import JobResult
from service.mail import build_message
from tests.unit.test_config import vcap

PASSWORD = "pr0xy-Secret-Jk21"


def proxy_binding(name="https-proxy-creds", **credentials):
    return {"name": name, "label": "user-provided", "credentials": credentials}


def config_of(*user_provided, **env):
    return load_config({"VCAP_SERVICES": vcap(**{"user-provided": list(user_provided)}), **env})


def problems_of(*user_provided, **env) -> str:
    with pytest.raises(ConfigError) as caught:
        config_of(*user_provided, **env)
    return caught.value.detail


def test_the_bound_proxy_comes_from_https_uri_and_its_password_is_a_secret():
    """https_uri gives scheme, host and port (shown) and user and password (percent-decoded, hidden)."""
    config = config_of(proxy_binding(https_uri=f"https://fac:{PASSWORD}%40x@egress.apps.internal:61443",
                                     uri="https://old:old@elsewhere:1"))
    proxy = config.egress.https
    assert (proxy.url, proxy.username, proxy.password) == ("https://egress.apps.internal:61443", "fac", PASSWORD + "@x")
    assert config.egress.http == proxy and proxy.source == "binding 'https-proxy-creds'"
    assert PASSWORD + "@x" in config.secrets()
    assert PASSWORD not in repr(config)


def test_an_older_binding_gives_its_proxy_as_uri_and_the_name_is_configurable():
    """`uri` (the key FAC's start script reads) serves when https_uri is absent; FAC_BACKUP_PROXY_SERVICE renames."""
    config = config_of(proxy_binding("egress", uri=f"https://u:{PASSWORD}@egress.apps.internal:61443"),
                       FAC_BACKUP_PROXY_SERVICE="egress")
    assert config.egress.https.url == "https://egress.apps.internal:61443"


def test_a_bad_proxy_binding_is_named_without_quoting_its_password():
    """A missing URI, a URI that is not http(s), or a named binding that is absent: one ConfigError each."""
    assert "binding 'https-proxy-creds' lacks credential key(s): https_uri or uri" in problems_of(proxy_binding())
    detail = problems_of(proxy_binding(https_uri=f"socks5://u:{PASSWORD}@egress:1080"))
    assert "must be http(s)://user:password@host:port" in detail and PASSWORD not in detail
    detail = problems_of(proxy_binding(https_uri=f"https://u:{PASSWORD}@egress:port"))
    assert "numeric port" in detail and PASSWORD not in detail
    assert "no service binding named 'egress'" in problems_of(FAC_BACKUP_PROXY_SERVICE="egress")


def test_without_the_binding_the_environment_proxy_applies_lowercase_first():
    """https_proxy wins over HTTPS_PROXY (curl's and urllib's order); a bare host:port means http;
    with the binding, the variables are not used."""
    config = config_of(HTTPS_PROXY="http://upper:1", https_proxy=f"u:{PASSWORD}@lower:3128", NO_PROXY="apps.internal")
    assert config.egress.https.url == "http://lower:3128" and config.egress.http is None
    assert config.egress.https.source == "the environment's https_proxy" and config.egress.no_proxy == "apps.internal"
    assert PASSWORD in config.secrets()
    bound = config_of(proxy_binding(https_uri="https://u:p@egress:61443"), https_proxy="http://lower:3128")
    assert bound.egress.https.url == "https://egress:61443"


def test_no_proxy_names_hosts_and_domains_reached_directly():
    """no_proxy: exact hosts, domain suffixes (with or without a leading dot), host:port, or `*`."""
    proxy = Proxy("https://egress:61443", "binding 'https-proxy-creds'", "u", "p")
    egress = Egress(proxy, None, no_proxy="apps.internal, .example.gov,hooks.test:8443")
    assert egress.proxy_for("https://hooks.slack.com/services/x") == proxy
    assert egress.proxy_for("https://alerts.apps.internal:9093/hook") is None
    assert egress.proxy_for("https://a.example.gov/x") is None
    assert egress.proxy_for("https://hooks.test:8443/x") is None and egress.proxy_for("https://hooks.test/x") == proxy
    assert egress.proxy_for("http://plain.example.com/x") is None  # no http proxy set
    assert Egress(proxy, proxy, no_proxy="*").proxy_for("https://hooks.slack.com/x") is None


MAIL = {"FAC_BACKUP_EMAIL_TO": "a@example.gov, B <b@example.gov>", "FAC_BACKUP_EMAIL_FROM": "fac-backup@example.gov"}


def smtp_binding(**credentials):
    return {"name": "smtp-proxy-creds", "label": "user-provided", "credentials": credentials}


def test_the_mail_relay_is_the_smtp_binding_unless_a_host_is_configured():
    """smtp-proxy-creds' domain and port; FAC_BACKUP_SMTP_HOST (port 25 by default) takes precedence."""
    relay = config_of(smtp_binding(domain="smtp-proxy.apps.internal", port="8025"), **MAIL).mail
    assert (relay.host, relay.port, relay.source) == ("smtp-proxy.apps.internal", 8025, "binding 'smtp-proxy-creds'")
    assert relay.recipients == ("a@example.gov", "B <b@example.gov>") and relay.sender == "fac-backup@example.gov"
    chosen = config_of(smtp_binding(domain="smtp-proxy.apps.internal", port="8025"),
                       FAC_BACKUP_SMTP_HOST="relay.example.gov", **MAIL).mail
    assert (chosen.host, chosen.port) == ("relay.example.gov", 25)
    assert config_of(smtp_binding(domain="smtp-proxy.apps.internal", port="8025")).mail is None  # no recipients


def test_mail_settings_that_cannot_work_stop_the_start():
    """Recipients without a relay or a sender, a bad address, a bad port, a host without recipients."""
    assert "no mail relay: bind 'smtp-proxy-creds' or set FAC_BACKUP_SMTP_HOST" in problems_of(**MAIL)
    assert "FAC_BACKUP_EMAIL_FROM must be" in problems_of(FAC_BACKUP_EMAIL_TO="a@example.gov",
                                                         FAC_BACKUP_SMTP_HOST="relay")
    assert "must be e-mail addresses" in problems_of(**{**MAIL, "FAC_BACKUP_EMAIL_TO": "a@example.gov, nobody"},
                                                     FAC_BACKUP_SMTP_HOST="relay")
    assert "lacks credential key(s): port" in problems_of(smtp_binding(domain="smtp-proxy"), **MAIL)
    assert "FAC_BACKUP_SMTP_PORT: port '0' is not a TCP port (1-65535)" in problems_of(
        FAC_BACKUP_SMTP_HOST="relay", FAC_BACKUP_SMTP_PORT="0", **MAIL)
    assert "names no recipient" in problems_of(FAC_BACKUP_SMTP_HOST="relay")


def test_the_mail_is_plain_text_under_a_subject_naming_space_job_and_outcome():
    """One text/plain part: the notification's text, then a line per field; the subject is one line."""
    relay = config_of(smtp_binding(domain="smtp-proxy", port="25"), **MAIL).mail
    result = JobResult("daily_backup", "r1", "aborted", 1.0)
    payload = notify.build_payload(result, space="staging")
    message = build_message(payload, notify.build_subject(result, space="staging"), relay)
    assert message["Subject"] == "fac-backup (staging): daily_backup was aborted"
    assert message["To"] == "a@example.gov, B <b@example.gov>" and message.get_content_type() == "text/plain"
    body = message.get_content()
    assert body.splitlines()[0] == "fac-backup (staging): daily_backup was aborted (run r1)"
    assert ["outcome:", "aborted"] in [line.split() for line in body.splitlines()]
    assert max(len(line) for line in body.splitlines()) <= 78
    assert "recovered" not in body  # empty and false fields are left out
    assert json.loads(json.dumps(payload)) == payload  # the same fields the webhook gets


def test_the_manifest_shows_the_production_bindings_and_the_variables_to_set():
    """manifest.yml carries both restricted-egress bindings, commented, and the email variables."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "manifest.yml").read_text()
    for line in ("# - https-proxy-creds", "# - smtp-proxy-creds", "# FAC_BACKUP_EMAIL_TO:", "# FAC_BACKUP_EMAIL_FROM:"):
        assert line in text, line
    assert "HTTPS_PROXY:" not in text
