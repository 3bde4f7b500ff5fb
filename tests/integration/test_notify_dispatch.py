"""Outbox delivery against real receivers: a signing-checking HTTP server and an SMTP server.

Every test runs on SQLite and PostgreSQL (the store fixtures). Time is injected:
the dispatcher's ``now`` decides what is due; receivers are real sockets.
"""

from __future__ import annotations

import threading

import pytest

from tests.integration.notify_support import (
    DAY,
    POLICY,
    SECRET,
    SECRET_ENV,
    T0,
    MailReceiver,
    WebhookReceiver,
    placed,
)
from tests.integration.store import conftest as store_fixtures
from tier_ml.money import MICROS_PER_UNIT
from tier_ml.notify import outbox
from tier_ml.notify.backoff import backoff_us
from tier_ml.notify.config import parse_channels
from tier_ml.notify.dispatcher import dispatch
from tier_ml.notify.senders import build_senders
from tier_ml.notify.service import outbox_list, outbox_retry
from tier_ml.store import service
from tier_ml.store.unit_of_work import run_in_transaction

# the store tests' fixtures: every test here runs on SQLite and PostgreSQL
backend = store_fixtures.backend
new_store_url = store_fixtures.new_store_url
postgres_schema_url = store_fixtures.postgres_schema_url
store_url = store_fixtures.store_url
engine = store_fixtures.engine

MINUTE = 60 * MICROS_PER_UNIT


@pytest.fixture(autouse=True)
def _secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setenv("TIER_ML_TEST_LOYALTY_SECRET", "loyalty-secret")


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()


def config_for(*urls: str, **delivery):
    settings = {"max_attempts": 5, "backoff_seconds": 60, "jitter": 0.2, **delivery}
    return parse_channels(
        {
            "program_name": "Acme Rewards",
            "delivery": settings,
            "webhooks": [
                {"name": f"hook{i}", "url": url, "secret_env": SECRET_ENV}
                for i, url in enumerate(urls)
            ],
        }
    )


def climb(engine, customer: str = "ann", start: int = T0) -> None:
    """Three messages for one customer, in this order: welcome (Silver), Gold, VIP."""
    for step, (amount, offset) in enumerate([(300, 0), (800, 1), (4000, 2)]):
        at = start + offset * DAY
        service.apply_events(
            engine, [placed(customer, f"{customer}-{step}", amount, at)], at, POLICY
        )


def run(engine, config, now_us, **kwargs):
    return dispatch(engine, config, build_senders(config), now_us, **kwargs)


def test_signed_delivery_in_order_with_perks(engine, receiver) -> None:
    climb(engine, "ann")
    climb(engine, "bob", T0 + 10 * MINUTE)
    config = config_for(receiver.url)
    result = run(engine, config, T0 + 5 * DAY)
    assert (result.delivered, result.retrying, result.dead) == (6, 0, 0)
    assert all(r.signature_ok for r in receiver.requests)
    for customer in ("ann", "bob"):
        seen = [r.body for r in receiver.requests if r.body["customer_id"] == customer]
        assert [(b["kind"], b["data"]["new_tier"]) for b in seen] == [
            ("welcome", "Silver"),
            ("tier_upgraded", "Gold"),
            ("tier_upgraded", "VIP"),
        ]
        assert seen[-1]["data"]["perks"] == {
            "discount_rate": 0.1,
            "free_shipping": True,
            "priority_support": True,
        }
    assert all(r.key == r.body["id"] and r.attempt == "1" for r in receiver.requests)
    entries = outbox_list(engine, "delivered")
    assert len(entries) == 6 and all(e["channels_delivered"] == ["hook0"] for e in entries)
    assert run(engine, config, T0 + 6 * DAY).attempts == 0  # nothing is sent twice


def test_failures_retry_with_backoff_and_hold_later_messages(engine) -> None:
    receiver = WebhookReceiver(fail_first=2).start()
    try:
        climb(engine, "ann")
        config = config_for(receiver.url)
        now = T0 + 5 * DAY
        first = run(engine, config, now)
        assert (first.attempts, first.retrying) == (1, 1)  # the later two wait behind the first
        [entry] = [e for e in outbox_list(engine, "pending") if e["attempts"] == 1]
        key = entry["idempotency_key"]
        wait = backoff_us(1, base_seconds=60, max_seconds=6 * 3600, jitter=0.2, key=key)
        assert 48 * MICROS_PER_UNIT <= wait <= 72 * MICROS_PER_UNIT
        assert run(engine, config, now + wait - 1).attempts == 0  # not due yet
        second = run(engine, config, now + wait)
        assert (second.attempts, second.retrying) == (1, 1)
        wait2 = backoff_us(2, base_seconds=60, max_seconds=6 * 3600, jitter=0.2, key=key)
        assert wait2 > wait
        third = run(engine, config, now + wait + wait2)
        assert (third.delivered, third.retrying) == (3, 0)
        attempts = [r for r in receiver.requests if r.key == key]
        assert [r.attempt for r in attempts] == ["1", "2", "3"]
        assert all(r.body == attempts[0].body for r in attempts)  # same bytes, same key
        assert [r.body["data"]["new_tier"] for r in receiver.requests] == [
            "Silver", "Silver", "Silver", "Gold", "VIP",
        ]  # fmt: skip
    finally:
        receiver.stop()


def test_receiver_down_for_a_while_loses_nothing(engine) -> None:
    receiver = WebhookReceiver()  # not started: connection refused
    for customer in ("ann", "bob", "cid"):
        climb(engine, customer)
    config = config_for(receiver.url, max_attempts=6, backoff_seconds=30, max_backoff_seconds=600)
    now = T0 + 5 * DAY
    for _ in range(4):  # four rounds of failures, each after the backoff has passed
        result = run(engine, config, now)
        assert result.delivered == 0 and result.attempts == 3  # one head per customer
        now += 20 * MINUTE
    pending = outbox_list(engine, "pending")
    assert len(pending) == 9 and "ConnectError" in (pending[0]["last_error"] or "")
    receiver.start()
    try:
        result = run(engine, config, now)
        assert (result.delivered, result.dead) == (9, 0)
        assert len(receiver.effects) == 9 and len(receiver.requests) == 9
        for customer in ("ann", "bob", "cid"):
            tiers = [
                r.body["data"]["new_tier"]
                for r in receiver.requests
                if r.body["customer_id"] == customer
            ]
            assert tiers == ["Silver", "Gold", "VIP"]
    finally:
        receiver.stop()


def test_lost_ack_is_redelivered_without_a_second_effect(engine) -> None:
    receiver = WebhookReceiver(lose_ack_first=1).start()
    try:
        service.apply_events(engine, [placed("ann", "o1", 1500, T0)], T0, POLICY)
        config = config_for(receiver.url)
        first = run(engine, config, T0 + DAY)
        assert first.retrying == 1  # the receiver applied it, but we never heard back
        assert len(receiver.effects) == 1
        later = run(engine, config, T0 + 2 * DAY)
        assert later.delivered == 1
        assert [r.key for r in receiver.requests] == [receiver.requests[0].key] * 2
        assert len(receiver.effects) == 1  # the receiver deduped by Idempotency-Key
    finally:
        receiver.stop()


def test_dead_letter_after_max_attempts_then_retry(engine) -> None:
    receiver = WebhookReceiver(fail_first=10**6).start()
    try:
        climb(engine, "ann")
        config = config_for(receiver.url, max_attempts=3, backoff_seconds=1, max_backoff_seconds=1)
        now = T0 + 5 * DAY
        for _ in range(3):
            run(engine, config, now)
            now += MINUTE
        [dead] = outbox_list(engine, "dead")
        assert dead["kind"] == "welcome" and dead["attempts"] == 3
        assert dead["last_error"] == "hook0: HTTP 503"
        # a dead letter leaves the line: the customer's next message was tried right after
        assert [e["attempts"] for e in outbox_list(engine, "pending")] == [1, 0]
        receiver.fail_first = 0
        assert run(engine, config, now).delivered == 2
        outcome = outbox_retry(engine, [dead["id"], 999_999], now)
        assert (outcome.retried, outcome.not_found) == ([dead["id"]], [999_999])
        assert outbox_list(engine, "pending")[0]["attempts"] == 0  # a fresh attempt budget
        assert run(engine, config, now).delivered == 1
        assert outbox_list(engine, "dead") == []
        assert outbox_retry(engine, [dead["id"]], now).already_delivered == [dead["id"]]
    finally:
        receiver.stop()


def test_a_refused_message_is_dead_at_once(engine) -> None:
    receiver = WebhookReceiver(fail_first=1, fail_status=422).start()
    try:
        service.apply_events(engine, [placed("ann", "o1", 100, T0)], T0, POLICY)
        result = run(engine, config_for(receiver.url), T0 + DAY)
        assert (result.dead, result.attempts) == (1, 1)
        assert outbox_list(engine, "dead")[0]["last_error"] == "hook0: HTTP 422"
    finally:
        receiver.stop()


def test_wrong_secret_is_refused_by_the_receiver_and_retried(engine, receiver, monkeypatch) -> None:
    monkeypatch.setenv(SECRET_ENV, "not-the-shared-secret")
    service.apply_events(engine, [placed("ann", "o1", 100, T0)], T0, POLICY)
    result = run(engine, config_for(receiver.url), T0 + DAY)
    assert result.retrying == 1 and receiver.effects == {}
    assert [r.signature_ok for r in receiver.requests] == [False]


def test_only_the_failed_channel_is_retried(engine, receiver) -> None:
    flaky = WebhookReceiver(fail_first=1).start()
    try:
        service.apply_events(engine, [placed("ann", "o1", 100, T0)], T0, POLICY)
        config = config_for(receiver.url, flaky.url)
        assert run(engine, config, T0 + DAY).retrying == 1
        assert run(engine, config, T0 + 2 * DAY).delivered == 1
        assert len(receiver.requests) == 1 and len(flaky.requests) == 2
        [entry] = outbox_list(engine, "delivered")
        assert entry["channels_delivered"] == ["hook0", "hook1"]
    finally:
        flaky.stop()


def test_concurrent_dispatchers_send_each_message_once(engine, receiver) -> None:
    for customer in ("ann", "bob", "cid", "dan"):
        climb(engine, customer)
    config = config_for(receiver.url, batch_size=2)
    senders = build_senders(config)
    results = []

    def worker() -> None:
        results.append(dispatch(engine, config, senders, T0 + 5 * DAY))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.delivered for r in results) == 12
    keys = [r.key for r in receiver.requests]
    assert len(keys) == len(set(keys)) == 12


def test_a_claim_that_never_finished_is_retried_after_the_lease(engine, receiver) -> None:
    service.apply_events(engine, [placed("ann", "o1", 100, T0)], T0, POLICY)
    config = config_for(receiver.url, lease_seconds=300)
    now = T0 + DAY

    def crash_after_claim(uow) -> bool:  # a dispatcher that died while sending
        [head] = outbox.due_heads(uow.repo.connection, now, 10)
        return outbox.claim(uow.repo.connection, head.id, now, 300 * MICROS_PER_UNIT)

    assert run_in_transaction(engine, crash_after_claim)
    assert run(engine, config, now + 299 * MICROS_PER_UNIT).attempts == 0
    assert run(engine, config, now + 300 * MICROS_PER_UNIT).delivered == 1
    assert outbox_list(engine)[0]["attempts"] == 2


def test_loyalty_sync_grants_bonus_points_on_upgrades(engine, receiver) -> None:
    loyalty = WebhookReceiver(secret="loyalty-secret").start()
    try:
        climb(engine, "ann")
        config = parse_channels(
            {
                "loyalty": {
                    "url": loyalty.url,
                    "secret_env": "TIER_ML_TEST_LOYALTY_SECRET",
                    "bonus_points": {"Gold": 500, "VIP": 2000},
                },
            }
        )
        assert run(engine, config, T0 + 5 * DAY).delivered == 3
        grants = [(r.body["tier"], r.body["points"]) for r in loyalty.requests]
        assert grants == [("Gold", 500), ("VIP", 2000)]  # welcome (Silver) grants nothing
        assert all(r.signature_ok for r in loyalty.requests)
        assert all(r.key == r.body["id"] for r in loyalty.requests)
    finally:
        loyalty.stop()


def test_email_over_smtp_with_templates_and_perks(engine, tmp_path) -> None:
    (tmp_path / "customers.csv").write_text("customer_id,email,name\nann,ann@example.test,Ann\n")
    climb(engine, "ann")
    service.apply_events(engine, [placed("zed", "z1", 100, T0)], T0, POLICY)  # no address
    with MailReceiver() as mail:
        config = parse_channels(
            {
                "program_name": "Acme Rewards",
                "email": mail.email_channel(
                    "Acme Rewards <rewards@example.test>", recipients_file="customers.csv"
                ),
            },
            base_dir=tmp_path,
        )
        result = run(engine, config, T0 + 5 * DAY)
        assert result.delivered == 4
        subjects = [m["Subject"] for m in mail.messages]
        assert subjects == [
            "Welcome to Acme Rewards: you are Silver",
            "You are now Gold",
            "You are now VIP",
        ]
        vip = mail.messages[-1]
        assert (
            vip["To"] == "ann@example.test" and vip["From"] == "Acme Rewards <rewards@example.test>"
        )
        text = vip.get_body(("plain",)).get_content()
        assert "Hello Ann," in text and "Priority support" in text and "Discount 10%" in text
        assert "<li>Free shipping</li>" in vip.get_body(("html",)).get_content()
        keys = {e["customer_id"]: e for e in outbox_list(engine)}
        assert (
            vip["Idempotency-Key"] == outbox_list(engine, customer_id="ann")[-1]["idempotency_key"]
        )
        assert keys["zed"]["status"] == "delivered"  # nobody to write to: not retried forever


def test_email_server_down_then_up(engine, tmp_path) -> None:
    service.apply_events(engine, [placed("ann", "o1", 100, T0)], T0, POLICY)
    mail = MailReceiver()
    config = parse_channels(
        {
            "email": mail.email_channel(address_template="{{ customer_id }}@example.test")
        }
    )
    assert run(engine, config, T0 + DAY).retrying == 1
    with mail:
        assert run(engine, config, T0 + 2 * DAY).delivered == 1
        assert [m["To"] for m in mail.messages] == ["ann@example.test"]


def tls_server_context(tmp_path):
    import ssl

    from tests.integration.notify_support import self_signed_certificate

    pytest.importorskip("cryptography")
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context, cert


def email_config(port: int, **settings):
    return parse_channels(
        {
            "email": {
                "host": "127.0.0.1",
                "port": port,
                "from": "rewards@example.test",
                "address_template": "{{ customer_id }}@example.test",
                **settings,
            }
        }
    )


def test_email_starttls_with_a_verified_certificate_and_login(
    engine, tmp_path, monkeypatch
) -> None:
    from aiosmtpd.smtp import AuthResult, LoginPassword

    context, cert = tls_server_context(tmp_path)
    logins = []

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.password == b"mail-pass"
        logins.append((auth_data.login, ok))
        return AuthResult(success=ok)

    monkeypatch.setenv("TEST_SMTP_USER", "tier-ml")
    monkeypatch.setenv("TEST_SMTP_PASSWORD", "mail-pass")
    service.apply_events(engine, [placed("ann", "o1", 100, T0)], T0, POLICY)
    server = MailReceiver(
        tls_context=context, require_starttls=True, authenticator=authenticator, auth_required=True
    )
    with server as mail:
        unverified = email_config(mail.port, tls="starttls")  # the system CAs do not know it
        assert run(engine, unverified, T0 + DAY).retrying == 1
        assert "CERTIFICATE_VERIFY_FAILED" in outbox_list(engine)[0]["last_error"]
        config = email_config(
            mail.port,
            tls="starttls",
            ca_file=str(cert),
            username_env="TEST_SMTP_USER",
            password_env="TEST_SMTP_PASSWORD",
        )
        assert run(engine, config, T0 + 2 * DAY).delivered == 1
        assert logins == [(b"tier-ml", True)] and len(mail.messages) == 1


def test_email_over_implicit_tls(engine, tmp_path) -> None:
    context, _ = tls_server_context(tmp_path)
    service.apply_events(engine, [placed("ann", "o1", 100, T0)], T0, POLICY)
    with MailReceiver(ssl_context=context) as mail:
        config = email_config(mail.port, tls="ssl", verify_certificate=False)
        assert run(engine, config, T0 + DAY).delivered == 1
        assert [m["To"] for m in mail.messages] == ["ann@example.test"]
