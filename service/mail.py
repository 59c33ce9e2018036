"""Notification email: the relay, the message, and one delivery bounded by a deadline.

The relay is FAC_BACKUP_SMTP_HOST (port FAC_BACKUP_SMTP_PORT, 25) when set, else the binding
`smtp-proxy-creds` (FAC_BACKUP_SMTP_SERVICE names another): `credentials.domain` and
`credentials.port`, the SMTP proxy of FAC's production space. Mail goes out only when
FAC_BACKUP_EMAIL_TO names recipients, and then FAC_BACKUP_EMAIL_FROM must name the sender the
relay accepts. SMTP never goes through the HTTPS proxy.

The message is plain text (no HTML, no attachment): the notification's text, then one line per
field. smtplib's timeout bounds each socket operation, not a delivery (a relay that answers a byte
at a time would hold it for hours), so a watchdog shuts the connection down at the delivery's
deadline; service.notify waits no longer than that deadline in any case.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import textwrap
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid, parseaddr

from service.egress import DeliveryError
from service.errors import quote_input
from service.vcap import credentials, tcp_port

SMTP_SERVICE = "smtp-proxy-creds"
PREFIX = "FAC_BACKUP_"
WIDTH = 76


@dataclass(frozen=True)
class MailRelay:
    """Where notification mail goes, from whom, to whom."""

    host: str
    port: int
    sender: str
    recipients: tuple[str, ...]
    source: str  # "binding 'smtp-proxy-creds'" or "FAC_BACKUP_SMTP_HOST"


def _address(text: str) -> str | None:
    name, address = parseaddr(text)
    if "@" not in address or any(c.isspace() for c in address) or "\n" in text or "\r" in text:
        return None
    return text.strip() if name else address


def read_mail(environ: Mapping[str, str], bindings: dict, problems: list[str]) -> MailRelay | None:
    """The relay and addresses when FAC_BACKUP_EMAIL_TO is set (else None); every problem appended."""
    def setting(name: str) -> str:
        return (environ.get(PREFIX + name) or "").strip()

    to_text, host = setting("EMAIL_TO"), setting("SMTP_HOST")
    named = setting("SMTP_SERVICE")
    if not to_text:
        if host:
            problems.append(f"{PREFIX}SMTP_HOST is set but {PREFIX}EMAIL_TO names no recipient")
        return None
    recipients = tuple(a for a in (_address(t) for t in to_text.split(",") if t.strip()) if a)
    if len(recipients) != len([t for t in to_text.split(",") if t.strip()]) or not recipients:
        problems.append(f"{PREFIX}EMAIL_TO={quote_input(to_text)} must be e-mail addresses separated by commas")
    sender = _address(setting("EMAIL_FROM"))
    if sender is None:
        problems.append(f"{PREFIX}EMAIL_FROM must be the sender's address (one the mail relay accepts) "
                        f"when {PREFIX}EMAIL_TO is set")
    service = named or SMTP_SERVICE
    if host:
        source = f"{PREFIX}SMTP_HOST"
        port = tcp_port(setting("SMTP_PORT") or "25", f"{PREFIX}SMTP_PORT", problems) or 25
    elif service in bindings:
        source = f"binding {service!r}"
        creds = credentials(bindings[service], service, ("domain", "port"), problems)
        if creds is None:
            return None
        host, port = str(creds["domain"]).strip(), tcp_port(creds["port"], source, problems) or 25
    else:
        where = f"no service binding named {named!r} in VCAP_SERVICES ({PREFIX}SMTP_SERVICE)" if named else (
            f"no mail relay: bind {SMTP_SERVICE!r} or set {PREFIX}SMTP_HOST")
        problems.append(f"{PREFIX}EMAIL_TO is set but there is {where}")
        return None
    return MailRelay(host, port, sender or "", recipients, source)


def build_body(payload: Mapping) -> str:
    """The notification's text, then one `field: value` line per non-empty field, wrapped to read."""
    fields = [(k, str(v)) for k, v in payload.items() if k not in ("text", "service") and v not in (None, "", False)]
    width = max((len(k) for k, _v in fields), default=0) + 2
    lines = textwrap.wrap(str(payload.get("text", "")), WIDTH) + [""]
    for key, value in fields:
        label = f"{key}:".ljust(width)
        lines += textwrap.wrap(value, WIDTH, initial_indent=label, subsequent_indent=" " * width) or [label]
    lines += ["", "-- ", "Sent by fac-backup, the Federal Audit Clearinghouse's backup service."]
    return "\n".join(lines) + "\n"


def build_message(payload: Mapping, subject: str, relay: MailRelay) -> EmailMessage:
    """A plain-text message; the Message-ID uses the sender's domain (no DNS look-up)."""
    message = EmailMessage()
    message["From"] = relay.sender
    message["To"] = ", ".join(relay.recipients)
    message["Subject"] = " ".join(subject.split())  # one line, whatever the job's text held
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("fac-backup", domain=parseaddr(relay.sender)[1].rpartition("@")[2])
    message.set_content(build_body(payload))
    return message


def _cut(smtp: smtplib.SMTP) -> None:
    """Shut the relay's socket down: wakes a read that is still waiting on another thread."""
    sock = smtp.sock
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def send_mail(relay: MailRelay, message: EmailMessage, *, deadline: float) -> None:
    """Deliver `message` to the relay before `deadline` (time.monotonic()), or raise DeliveryError."""
    where = f"{relay.host}:{relay.port} ({relay.source})"
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeliveryError("timeout", f"no time was left for the mail relay {where}")
    # socket.getfqdn(), smtplib's default name for EHLO, can wait on DNS; the host name cannot.
    smtp = smtplib.SMTP(timeout=left, local_hostname=socket.gethostname() or "localhost")
    # The timeout bounds each read; a relay that sends a byte a second would never trip it. The
    # watchdog ends the whole conversation at the deadline.
    watchdog = threading.Timer(left, _cut, (smtp,))
    watchdog.daemon = True
    watchdog.start()
    try:
        smtp.connect(relay.host, relay.port)
        smtp.send_message(message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise DeliveryError("refused", f"the mail relay {where} refused every recipient "
                            f"({', '.join(sorted(exc.recipients))})") from None
    except smtplib.SMTPResponseException as exc:
        raise DeliveryError(f"SMTP {exc.smtp_code}", f"the mail relay {where} answered {exc.smtp_code} "
                            f"{exc.smtp_error.decode('utf-8', 'replace')[:200]}") from None
    except (smtplib.SMTPException, OSError) as exc:
        if isinstance(exc, TimeoutError) or time.monotonic() >= deadline:
            raise DeliveryError("timeout", f"the mail relay {where} did not answer within {left:.1f} s") from None
        raise DeliveryError("unreachable", f"cannot deliver to the mail relay {where} ({type(exc).__name__})",
                            "check the relay's binding or FAC_BACKUP_SMTP_HOST") from None
    finally:
        if smtp.sock is not None and time.monotonic() < deadline:
            with contextlib.suppress(smtplib.SMTPException, OSError):
                smtp.quit()  # still under the watchdog
        watchdog.cancel()
        smtp.close()
