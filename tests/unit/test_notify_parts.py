"""The small parts of notifications: signatures, backoff, the channels file, templates."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from tier_ml.money import MICROS_PER_UNIT
from tier_ml.notify.backoff import backoff_us, jitter_factor
from tier_ml.notify.config import (
    DEFAULT_CHANNELS_EXAMPLE,
    EVENT_KINDS,
    ChannelsError,
    find_channels_file,
    load_channels,
    parse_channels,
    require_env,
)
from tier_ml.notify.messages import MessageContext, OutboxMessage, canonical_json, webhook_document
from tier_ml.notify.rendering import TemplateError, build_environment, perk_lines, render_email
from tier_ml.notify.signing import sign, verify


def test_signature_is_hmac_sha256_of_the_body() -> None:
    body = b'{"id":"k1","kind":"welcome"}'
    expected = hmac.new(b"secret", body, hashlib.sha256).hexdigest()
    assert sign(body, "secret") == f"sha256={expected}"
    assert verify(body, "secret", f"sha256={expected}")
    assert not verify(body + b" ", "secret", f"sha256={expected}")
    assert not verify(body, "other", f"sha256={expected}")
    assert not verify(body, "secret", None)


def test_backoff_doubles_up_to_the_cap_with_bounded_deterministic_jitter() -> None:
    delays = [
        backoff_us(n, base_seconds=10, max_seconds=300, jitter=0.0, key="k") for n in range(1, 8)
    ]
    assert [d // MICROS_PER_UNIT for d in delays] == [10, 20, 40, 80, 160, 300, 300]
    jittered = [
        backoff_us(1, base_seconds=10, max_seconds=300, jitter=0.25, key=f"k{i}")
        for i in range(200)
    ]
    assert all(7.5 * MICROS_PER_UNIT <= d <= 12.5 * MICROS_PER_UNIT for d in jittered)
    assert len(set(jittered)) > 150  # messages that failed together spread out
    assert jitter_factor("k", 3, 0.2, seed=1) == jitter_factor("k", 3, 0.2, seed=1)
    assert jitter_factor("k", 3, 0.2, seed=1) != jitter_factor("k", 3, 0.2, seed=2)


def test_the_example_channels_file_is_valid(monkeypatch) -> None:
    config = load_channels(DEFAULT_CHANNELS_EXAMPLE)
    assert config.channel_names() == ["crm", "email", "loyalty"]
    assert config.email is not None and config.email.recipients_file is not None
    assert config.email.recipients_file.is_absolute()  # resolved beside the channels file
    assert config.loyalty is not None and config.loyalty.bonus_points["Gold"] > 0
    name, campaign = config.campaign(None)
    assert name == "gold_retention" and campaign.tiers == ("Gold",)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"webhooks": [{"name": "a", "url": "http://x", "secret": "s"}]}, "environment only"),
        ({"email": {"host": "h", "from": "a@b.c", "password": "p"}}, "password_env"),
        ({"webhooks": [{"name": "a", "url": "x", "secret_env": "S"}]}, "webhooks.0.url"),
        ({"email": {"host": "h", "from": "a@b.c"}}, "recipients_file"),
        ({"delivery": {"max_attempts": 0}}, "delivery.max_attempts"),
        ({"loyalty": {"url": "http://l", "secret_env": "S", "bonus_points": {"Gold": -1}}}, ">= 0"),
        (
            {"webhooks": [{"name": "a", "url": "http://x", "secret_env": "S"}] * 2},
            "channel names must be unique",
        ),
        (
            {"webhooks": [{"name": "a", "url": "http://x", "secret_env": "S",
                           "headers": {"x-tierml-signature": "forged", "Authorization": "Bearer t"}}]},
            r"headers \['x-tierml-signature'\] are set by tier-ml itself",
        ),
        ({"surprise": 1}, "surprise"),
        ([1, 2], "expected a mapping"),
    ],
)
def test_channels_file_errors_name_the_key(document, message) -> None:
    with pytest.raises(ChannelsError, match=message):
        parse_channels(document)


def test_secrets_only_from_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("NOPE_SECRET", raising=False)
    with pytest.raises(ChannelsError, match=r"NOPE_SECRET .*webhooks.crm.secret_env.* is not set"):
        require_env("NOPE_SECRET", "webhooks.crm.secret_env")
    monkeypatch.setenv("NOPE_SECRET", "x")
    assert require_env("NOPE_SECRET", "here") == "x"


def test_channels_file_lookup_order(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    beside = tmp_path / "channels.yaml"
    given, env = tmp_path / "given.yaml", tmp_path / "env.yaml"
    assert find_channels_file(None, None, policy) is None
    beside.write_text("{}")
    assert find_channels_file(None, None, policy) == beside
    assert find_channels_file(None, env, policy) == env
    assert find_channels_file(given, env, policy) == given


def test_perk_lines_read_like_perks() -> None:
    perks = {
        "discount_rate": 0.05,
        "free_shipping": True,
        "priority_support": False,
        "birthday_gift": "a cake",
        "lounges": ["Paris", "Oslo"],
        "points_multiplier": 2,
        "cashback_rate": 0,
    }
    assert perk_lines(perks) == [
        "Discount 5%",
        "Free shipping",
        "Birthday gift: a cake",
        "Lounges: Paris, Oslo",
        "Points multiplier: 2",
    ]


def context(kind: str) -> dict:
    return {
        "program_name": "Acme",
        "customer_id": "c1",
        "name": "Ann",
        "tier": "Gold",
        "old_tier": "Silver",
        "eligible_tier": "Silver",
        "at": "2025-06-30T12:00:00Z",
        "perks": {"discount_rate": 0.05, "free_shipping": True},
        "bonus_points": 250,
        "spend_needed": 0.0,
        "next_tier": "VIP",
        "orders_needed": 0,
        "currency": "EUR",
        "grace_ends_at": "2025-07-30T00:00:00Z",
        "offer": {"code": None, "description": "Free gift wrap"},
        "valid_until": "2025-08-01T00:00:00Z",
    }


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_every_event_kind_has_a_template_showing_perks(kind: str) -> None:
    rendered = render_email(build_environment(), kind, context(kind))
    assert rendered.subject and "\n" not in rendered.subject
    assert "Hello Ann," in rendered.text and "Discount 5%" in rendered.text
    assert rendered.html is not None and "<li>Free shipping</li>" in rendered.html


def test_template_details() -> None:
    environment = build_environment()
    upgraded = render_email(environment, "tier_upgraded", context("tier_upgraded"))
    assert "We added 250 bonus points" in upgraded.text and "30 June 2025" in upgraded.text
    warning = render_email(environment, "downgrade_warning", context("downgrade_warning"))
    assert "place an order by 30 July 2025 to keep Gold." in warning.text  # nothing to spend
    html = render_email(
        environment, "welcome", {**context("welcome"), "name": "<script>x</script>"}
    ).html
    assert html is not None and "<script>" not in html  # HTML is escaped, text is not


def test_custom_templates_override_and_missing_values_are_errors(tmp_path: Path) -> None:
    (tmp_path / "welcome.txt").write_text("Subject: Hi {{ name }}\n\nWelcome, {{ nickname }}!\n")
    environment = build_environment(tmp_path)
    with pytest.raises(TemplateError, match="nickname"):
        render_email(environment, "welcome", context("welcome"))
    rendered = render_email(environment, "welcome", {**context("welcome"), "nickname": "A"})
    assert (rendered.subject, rendered.text) == ("Hi Ann", "Welcome, A!\n")
    (tmp_path / "welcome.txt").write_text("no subject line\n")
    with pytest.raises(TemplateError, match="Subject"):
        render_email(build_environment(tmp_path), "welcome", context("welcome"))


def test_webhook_body_is_stable_and_carries_perks() -> None:
    message = OutboxMessage(
        7, "key-1", "tier_upgraded", "c1", {"new_tier": "Gold", "old_tier": "Silver"}, 0, attempts=1
    )
    later = OutboxMessage(**{**message.__dict__, "attempts": 4})
    ctx = MessageContext(perks={"free_shipping": True})
    body = canonical_json(webhook_document(message, ctx))
    assert body == canonical_json(webhook_document(later, ctx))  # retries send the same bytes
    assert b'"perks":{"free_shipping":true}' in body and b'"id":"key-1"' in body
