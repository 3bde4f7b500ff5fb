"""The channels that deliver a message: signed webhooks, SMTP email, the loyalty-points sync.

A sender either returns (the channel accepted the message; an optional detail
such as "skipped: no email address" is recorded) or raises
:class:`DeliveryError`. ``permanent`` errors are about the message itself (the
receiver rejected it as malformed, the mailbox does not exist, a template
cannot render it): retrying cannot help, so the message is dead-lettered at
once. Everything else (connection refused, timeouts, 5xx, 429, SMTP 4xx,
authentication) is retried with backoff, since the usual cause is an outage
or a configuration fix that is on its way.
"""

from __future__ import annotations

import csv
import smtplib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Protocol

import httpx
from jinja2 import Environment

from tier_ml.money import MICROS_PER_UNIT
from tier_ml.notify.config import (
    ChannelsConfig,
    ChannelsError,
    EmailChannel,
    LoyaltySync,
    WebhookChannel,
    require_env,
)
from tier_ml.notify.messages import (
    MessageContext,
    OutboxMessage,
    canonical_json,
    email_context,
    loyalty_document,
    webhook_document,
)
from tier_ml.notify.rendering import TemplateError, build_environment, render_email
from tier_ml.notify.signing import (
    ATTEMPT_HEADER,
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
    sign,
)

#: HTTP statuses that reject the message itself; other 4xx are retried (see the module docstring).
PERMANENT_HTTP = frozenset({400, 410, 413, 415, 422})
USER_AGENT = "tier-ml-notify/1"


class DeliveryError(Exception):
    """A channel did not accept a message."""

    def __init__(
        self, message: str, *, permanent: bool = False, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s


class Sender(Protocol):
    name: str

    def wants(self, message: OutboxMessage) -> bool: ...

    def send(self, message: OutboxMessage, context: MessageContext) -> str | None: ...


# --- webhooks ----------------------------------------------------------------------------------


def post_signed(
    client: httpx.Client,
    url: str,
    body: bytes,
    secret: str,
    message: OutboxMessage,
    headers: Mapping[str, str] | None = None,
) -> str:
    """POST ``body`` with its signature and idempotency key; the status line, or DeliveryError."""
    sent_headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: sign(body, secret),
        IDEMPOTENCY_HEADER: message.idempotency_key,
        EVENT_HEADER: message.kind,
        ATTEMPT_HEADER: str(message.attempts),
        **(headers or {}),
    }
    try:
        response = client.post(url, content=body, headers=sent_headers)
    except httpx.HTTPError as exc:
        raise DeliveryError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
    status = response.status_code
    if 200 <= status < 300:
        return f"HTTP {status}"
    text = f"HTTP {status}: {response.text[:200].strip()}".rstrip(": ")
    raise DeliveryError(
        text,
        permanent=status in PERMANENT_HTTP,
        retry_after_s=_retry_after(response.headers.get("Retry-After")),
    )


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delta form; an HTTP date is ignored)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None


@dataclass
class WebhookSender:
    """A JSON webhook signed with the channel's shared secret."""

    channel: WebhookChannel
    secret: str
    client: httpx.Client

    @property
    def name(self) -> str:
        return self.channel.name

    def wants(self, message: OutboxMessage) -> bool:
        return message.kind in self.channel.events

    def send(self, message: OutboxMessage, context: MessageContext) -> str | None:
        body = canonical_json(webhook_document(message, context))
        return post_signed(
            self.client, self.channel.url, body, self.secret, message, self.channel.headers
        )


@dataclass
class LoyaltySender:
    """Grants the configured bonus points for the tier a customer reached."""

    channel: LoyaltySync
    secret: str
    client: httpx.Client

    @property
    def name(self) -> str:
        return self.channel.name

    def points_for(self, message: OutboxMessage) -> int:
        if message.kind not in self.channel.events or message.tier is None:
            return 0
        return self.channel.bonus_points.get(message.tier, 0)

    def wants(self, message: OutboxMessage) -> bool:
        return self.points_for(message) > 0

    def send(self, message: OutboxMessage, context: MessageContext) -> str | None:
        body = canonical_json(loyalty_document(message, self.points_for(message)))
        return post_signed(self.client, self.channel.url, body, self.secret, message)


# --- email -------------------------------------------------------------------------------------


@dataclass
class AddressBook:
    """Customer email addresses: a CSV (customer_id,email[,name]) and/or a template."""

    entries: dict[str, dict[str, str]]
    template: Any = None  # a compiled Jinja2 template of customer_id

    @classmethod
    def for_channel(cls, channel: EmailChannel, environment: Environment) -> AddressBook:
        entries = (
            {} if channel.recipients_file is None else read_recipients(channel.recipients_file)
        )
        template = (
            None
            if channel.address_template is None
            else environment.from_string(channel.address_template)
        )
        return cls(entries, template)

    def lookup(self, customer_id: str) -> dict[str, str] | None:
        entry = self.entries.get(customer_id)
        if entry is not None:
            return entry
        if self.template is not None:
            address = self.template.render(customer_id=customer_id).strip()
            if address:
                return {"email": address}
        return None


def read_recipients(path: Path) -> dict[str, dict[str, str]]:
    """The address book CSV: ``customer_id,email`` and optionally ``name``."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = {"customer_id", "email"} - set(reader.fieldnames or [])
            if missing:
                raise ChannelsError(f"{path}: recipients file lacks columns {sorted(missing)}")
            return {
                row["customer_id"].strip(): {
                    "email": row["email"].strip(),
                    "name": (row.get("name") or "").strip(),
                }
                for row in reader
                if row.get("customer_id") and row.get("email")
            }
    except OSError as exc:
        raise ChannelsError(f"cannot read recipients file {path}: {exc.strerror or exc}") from None


@dataclass
class EmailSender:
    """Renders the event's template and sends it over SMTP (plain, STARTTLS or SSL)."""

    channel: EmailChannel
    username: str | None
    password: str | None
    environment: Environment
    addresses: AddressBook
    timeout_seconds: float = 10.0

    @property
    def name(self) -> str:
        return self.channel.name

    def wants(self, message: OutboxMessage) -> bool:
        return message.kind in self.channel.events

    def send(self, message: OutboxMessage, context: MessageContext) -> str | None:
        recipient = self.addresses.lookup(message.customer_id)
        if recipient is None:
            return "skipped: no email address"
        try:
            rendered = render_email(
                self.environment, message.kind, email_context(message, context, recipient)
            )
        except TemplateError as exc:
            raise DeliveryError(str(exc), permanent=True) from None
        email = EmailMessage()
        email["From"] = self.channel.from_address
        email["To"] = recipient["email"]
        email["Subject"] = rendered.subject
        if context.sent_at_us is not None:
            email["Date"] = formatdate(context.sent_at_us / MICROS_PER_UNIT, usegmt=True)
        email["Message-ID"] = make_msgid(idstring=message.idempotency_key, domain="tier-ml")
        email[IDEMPOTENCY_HEADER] = message.idempotency_key
        email[EVENT_HEADER] = message.kind
        if self.channel.reply_to:
            email["Reply-To"] = self.channel.reply_to
        email.set_content(rendered.text)
        if rendered.html is not None:
            email.add_alternative(rendered.html, subtype="html")
        self._deliver(email)
        return f"sent to {recipient['email']}"

    def _deliver(self, email: EmailMessage) -> None:
        channel = self.channel
        try:
            if channel.tls == "ssl":
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    channel.host, channel.port, timeout=self.timeout_seconds, context=self._tls()
                )
            else:
                smtp = smtplib.SMTP(channel.host, channel.port, timeout=self.timeout_seconds)
            with smtp:
                if channel.tls == "starttls":
                    smtp.starttls(context=self._tls())
                if self.username and self.password:
                    smtp.login(self.username, self.password)
                smtp.send_message(email)
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"SMTP recipient refused: {exc.recipients}",
                permanent=all(500 <= code < 600 for code in codes),
            ) from None
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(f"SMTP authentication failed: {exc.smtp_code}") from None
        except smtplib.SMTPResponseException as exc:
            detail = (
                exc.smtp_error.decode(errors="replace")
                if isinstance(exc.smtp_error, bytes)
                else exc.smtp_error
            )
            raise DeliveryError(
                f"SMTP {exc.smtp_code}: {detail}", permanent=500 <= exc.smtp_code < 600
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"SMTP {type(exc).__name__}: {exc}") from None

    def _tls(self) -> ssl.SSLContext:
        channel = self.channel
        context = ssl.create_default_context(
            cafile=None if channel.ca_file is None else str(channel.ca_file)
        )
        if not channel.verify_certificate:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context


# --- building the senders of a channels file ----------------------------------------------------


def build_senders(config: ChannelsConfig, client: httpx.Client | None = None) -> list[Sender]:
    """The senders of a :class:`~tier_ml.notify.config.ChannelsConfig`, secrets read from the
    environment now (a missing variable is a ``ChannelsError`` naming it)."""
    http = client or httpx.Client(timeout=config.delivery.timeout_seconds, follow_redirects=False)
    senders: list[Sender] = [
        WebhookSender(w, require_env(w.secret_env, f"webhooks.{w.name}.secret_env"), http)
        for w in config.webhooks
    ]
    if config.email is not None:
        email = config.email
        environment = build_environment(email.templates_dir)
        senders.append(
            EmailSender(
                email,
                None
                if email.username_env is None
                else require_env(email.username_env, "email.username_env"),
                None
                if email.password_env is None
                else require_env(email.password_env, "email.password_env"),
                environment,
                AddressBook.for_channel(email, environment),
                config.delivery.timeout_seconds,
            )
        )
    if config.loyalty is not None:
        loyalty = config.loyalty
        senders.append(
            LoyaltySender(loyalty, require_env(loyalty.secret_env, "loyalty.secret_env"), http)
        )
    return senders
