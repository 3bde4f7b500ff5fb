"""Real local receivers for the notification tests, and a small store to notify about.

- :class:`WebhookReceiver`: an HTTP server (stdlib ``http.server``) on 127.0.0.1
  in a thread. It verifies ``X-TierML-Signature`` over the raw body, can
  answer 503 to the first N requests, can *lose the ack* (apply the delivery,
  then drop the connection without a response), can be stopped and started
  again on the same port, and dedupes effects by ``Idempotency-Key`` the way
  a well-behaved receiver does.
- :class:`MailReceiver`: a real SMTP server (aiosmtpd) collecting messages.
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tier_ml.money import MICROS_PER_DAY
from tier_ml.notify.signing import IDEMPOTENCY_HEADER, SIGNATURE_HEADER, verify
from tier_ml.policy import parse_policy

T0 = 1_750_000_000_000_000  # 2025-06-15T15:06:40Z
DAY = MICROS_PER_DAY
SECRET = "s3cret-for-tests"
SECRET_ENV = "TIER_ML_TEST_WEBHOOK_SECRET"

POLICY = parse_policy(
    {
        "base_currency": "USD",
        "buffer_days": 0,
        "downgrade_grace_days": 30,
        "tiers": [
            {"name": "Silver", "perks": {"discount_rate": 0.0, "free_shipping": False}},
            {
                "name": "Gold",
                "min_spend": 1000,
                "perks": {"discount_rate": 0.05, "free_shipping": True},
            },
            {
                "name": "VIP",
                "min_spend": 5000,
                "perks": {"discount_rate": 0.1, "free_shipping": True, "priority_support": True},
            },
        ],
    }
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def placed(customer: str, order: str, amount: float, at_us: int) -> dict[str, Any]:
    """A raw canonical ``placed`` event."""
    from tier_ml.store.service import iso_instant

    return {
        "event_id": f"e-{order}",
        "event_type": "placed",
        "order_id": order,
        "customer_id": customer,
        "occurred_at": iso_instant(at_us),
        "amount": f"{amount:.2f}",
        "currency": "USD",
        "channel": "web",
        "region": "",
    }


@dataclass
class Delivery:
    key: str | None
    kind: str | None
    body: dict[str, Any]
    signature_ok: bool
    attempt: str | None
    acked: bool


@dataclass
class WebhookReceiver:
    """See the module docstring."""

    secret: str = SECRET
    fail_first: int = 0
    lose_ack_first: int = 0
    fail_status: int = 503
    port: int = field(default_factory=free_port)
    requests: list[Delivery] = field(default_factory=list)
    effects: dict[str, dict[str, Any]] = field(default_factory=dict)  # by idempotency key
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> WebhookReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.handle(self, body)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def handle(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        key = handler.headers.get(IDEMPOTENCY_HEADER)
        signature_ok = verify(body, self.secret, handler.headers.get(SIGNATURE_HEADER))
        document = json.loads(body)
        with self._lock:
            number = len(self.requests) + 1
            fail = number <= self.fail_first
            lose_ack = not fail and number <= self.fail_first + self.lose_ack_first
            self.requests.append(
                Delivery(
                    key,
                    handler.headers.get("X-TierML-Event"),
                    document,
                    signature_ok,
                    handler.headers.get("X-TierML-Attempt"),
                    acked=not (fail or lose_ack),
                )
            )
            if not signature_ok:
                status = 401
            elif fail:
                status = self.fail_status
            else:
                assert key is not None
                self.effects.setdefault(key, document)  # the dedupe: one effect per key
                status = 200
        if lose_ack:
            handler.close_connection = True
            handler.connection.shutdown(socket.SHUT_RDWR)  # applied, but no response reaches us
            return
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


class MailReceiver:
    """A real SMTP server (aiosmtpd) on 127.0.0.1 that keeps every message it accepts."""

    def __init__(self, ssl_context: Any = None, **smtp_parameters: Any) -> None:
        """``ssl_context``: implicit TLS; ``smtp_parameters``: aiosmtpd's (``tls_context`` for
        STARTTLS, ``require_starttls``, ``authenticator``, ...)."""
        from aiosmtpd.controller import Controller

        self.messages: list[EmailMessage] = []
        self.envelopes: list[Any] = []
        receiver = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                receiver.envelopes.append(envelope)
                receiver.messages.append(
                    message_from_bytes(envelope.content, policy=policy.default)  # type: ignore[arg-type]
                )
                return "250 OK"

        self.port = free_port()
        self.controller = Controller(
            Handler(),
            hostname="127.0.0.1",
            port=self.port,
            ssl_context=ssl_context,
            **smtp_parameters,
        )

    def email_channel(
        self, sender: str = "rewards@example.test", **settings: Any
    ) -> dict[str, Any]:
        """An ``email`` channel sending to this server in plain SMTP; ``settings`` add to it."""
        return {"host": "127.0.0.1", "port": self.port, "tls": "none", "from": sender, **settings}

    def __enter__(self) -> MailReceiver:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (IP SAN) and its key, as PEM files: (cert, key)."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def isolate_mlflow(monkeypatch: Any) -> None:
    """MLflow keeps its tracking and registry URIs in process globals (and mirrors the tracking
    URI into the environment): start from none and put everything back after the test."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
