"""The channels file: where messages go, how delivery retries, and the campaign settings.

A YAML file kept next to the policy (``channels.yaml``; ``TIER_ML_CHANNELS``
or ``--channels`` points elsewhere), edited by the people who run marketing,
validated here into immutable models. Secrets never live in it: a channel
names the environment variable that holds its secret (``secret_env``,
``password_env``) and :func:`require_env` reads it when a sender is built.
See ``tier_ml/data/channels.example.yaml`` for every key.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tier_ml.notify.signing import (
    ATTEMPT_HEADER,
    EVENT_HEADER,
    IDEMPOTENCY_HEADER,
    SIGNATURE_HEADER,
)
from tier_ml.yaml_files import read_yaml

#: The message kinds about one customer (every channel takes them by default).
EVENT_KINDS = (
    "welcome",
    "tier_upgraded",
    "tier_downgraded",
    "downgrade_warning",
    "retention_offer",
    "approaching_upgrade",
    "will_downgrade",
)
#: Message kinds about the models (``tier-ml monitor``): webhooks take them when asked to.
MODEL_EVENT_KINDS = ("drift_detected",)
CHANNELS_FILE_NAME = "channels.yaml"
DEFAULT_CHANNELS_EXAMPLE = Path(__file__).parents[1] / "data" / "channels.example.yaml"


class ChannelsError(ValueError):
    """A channels file that cannot be used, with a message a person can act on."""


_RESERVED_HEADERS = frozenset(
    name.lower() for name in (SIGNATURE_HEADER, IDEMPOTENCY_HEADER, EVENT_HEADER, ATTEMPT_HEADER, "Content-Type")
)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    known = EVENT_KINDS + MODEL_EVENT_KINDS
    unknown = sorted(set(kinds) - set(known))
    if unknown:
        raise ValueError(f"unknown event kinds {unknown}; known: {list(known)}")
    return kinds


def _check_customer_kinds(kinds: tuple[str, ...]) -> tuple[str, ...]:
    """Email and loyalty sync reach a customer: model events have no one to go to."""
    _check_kinds(kinds)
    model_kinds = sorted(set(kinds) & set(MODEL_EVENT_KINDS))
    if model_kinds:
        raise ValueError(f"{model_kinds} concern the models, not a customer: send them by webhook")
    return kinds


class DeliverySettings(_Model):
    """Retries: attempt n waits ``backoff_seconds * 2**(n-1)`` (capped), +/- ``jitter``."""

    max_attempts: int = Field(default=8, ge=1)
    backoff_seconds: float = Field(default=30.0, gt=0)
    max_backoff_seconds: float = Field(default=6 * 3600.0, gt=0)
    jitter: float = Field(default=0.2, ge=0, lt=1)
    jitter_seed: int = 0
    timeout_seconds: float = Field(default=10.0, gt=0)
    lease_seconds: float = Field(
        default=300.0, gt=0, description="A claimed message is retried after this if never acked."
    )
    batch_size: int = Field(default=200, ge=1)
    concurrency: int = Field(default=4, ge=1, le=64, description="Messages sent at once.")


class WebhookChannel(_Model):
    """A JSON webhook signed with HMAC-SHA256 (``X-TierML-Signature``)."""

    name: str = Field(min_length=1)
    url: str = Field(pattern=r"^https?://")
    secret_env: str = Field(min_length=1, description="Environment variable with the secret.")
    events: tuple[str, ...] = EVENT_KINDS
    headers: dict[str, str] = Field(default_factory=dict)

    _kinds = field_validator("events")(_check_kinds)

    @field_validator("headers")
    @classmethod
    def _no_reserved_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        """Extra headers may not replace the ones tier-ml signs and sends (any letter case):
        a configured ``X-TierML-Signature`` would otherwise go out in place of the HMAC."""
        taken = sorted(name for name in headers if name.lower() in _RESERVED_HEADERS)
        if taken:
            raise ValueError(f"headers {taken} are set by tier-ml itself (signature, idempotency, event, attempt)")
        return headers


class EmailChannel(_Model):
    """Email over SMTP, rendered from the Jinja2 templates of each event kind."""

    name: str = "email"
    host: str = Field(min_length=1)
    port: int = Field(default=587, ge=1, le=65535)
    tls: Literal["none", "starttls", "ssl"] = "starttls"
    verify_certificate: bool = True
    ca_file: Path | None = None
    username_env: str | None = None
    password_env: str | None = None
    from_address: str = Field(alias="from", min_length=3)
    reply_to: str | None = None
    recipients_file: Path | None = Field(
        default=None, description="CSV with customer_id,email[,name]: the address book."
    )
    address_template: str | None = Field(
        default=None, description="A Jinja2 expression of customer_id, e.g. for test systems."
    )
    templates_dir: Path | None = Field(
        default=None, description="Templates that override the packaged ones, by file name."
    )
    events: tuple[str, ...] = EVENT_KINDS

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    _kinds = field_validator("events")(_check_customer_kinds)

    @model_validator(mode="after")
    def _has_addresses(self) -> EmailChannel:
        if self.recipients_file is None and self.address_template is None:
            raise ValueError(
                "email needs recipients_file (customer_id,email CSV) or address_template"
            )
        return self


class LoyaltySync(_Model):
    """The loyalty-points system: a signed webhook that grants bonus points on an upgrade."""

    name: str = "loyalty"
    url: str = Field(pattern=r"^https?://")
    secret_env: str = Field(min_length=1)
    bonus_points: dict[str, int] = Field(
        default_factory=dict, description="Points granted on reaching each tier."
    )
    events: tuple[str, ...] = ("tier_upgraded",)

    _kinds = field_validator("events")(_check_customer_kinds)

    @field_validator("bonus_points")
    @classmethod
    def _points_positive(cls, points: dict[str, int]) -> dict[str, int]:
        for tier, value in points.items():
            if value < 0:
                raise ValueError(f"bonus_points.{tier} must be >= 0, got {value}")
        return points


class DowngradeWarningSettings(_Model):
    """Warn this many days before a grace period ends (0 turns warnings off)."""

    days_before: float = Field(default=14.0, ge=0)


class ApproachingUpgradeSettings(_Model):
    """Tell a customer they are close to the next tier, at most once per ``cooldown_days``.

    Close means the spend still missing is at most ``within`` times the next
    threshold (a share, e.g. 0.1) or at most ``within_amount`` (base currency);
    with both, either suffices. ``include_pending``: count orders still in the buffer.
    """

    within: float | None = Field(default=0.1, ge=0, le=1)
    within_amount: float | None = Field(default=None, ge=0)
    include_pending: bool = True
    cooldown_days: float = Field(default=30.0, ge=0)

    @model_validator(mode="after")
    def _has_distance(self) -> ApproachingUpgradeSettings:
        if self.within is None and self.within_amount is None:
            raise ValueError("approaching_upgrade needs within (share) or within_amount")
        return self


class WillDowngradeSettings(_Model):
    """``will_downgrade``: the downgrade-warning rule under its milestone name."""

    days_before: float = Field(default=14.0, gt=0)


class MilestoneSettings(_Model):
    """Milestone events; a section left out is off."""

    approaching_upgrade: ApproachingUpgradeSettings | None = None
    will_downgrade: WillDowngradeSettings | None = None


class Offer(_Model):
    """What a retention offer gives; shown in the email and sent in the webhook body."""

    model_config = ConfigDict(frozen=True, extra="allow")

    code: str | None = None
    description: str = "A thank-you offer for staying with us"
    valid_days: float = Field(default=30.0, gt=0)


class CampaignSettings(_Model):
    """A retention campaign: who is targeted, the score threshold, cooldown and control group."""

    tiers: tuple[str, ...] = ("Gold",)
    threshold: float = Field(default=0.5, ge=0, le=1)
    cooldown_days: int = Field(default=30, ge=0)
    control_share: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 0
    offer: Offer = Field(default_factory=Offer)


class ChannelsConfig(_Model):
    """The whole channels file."""

    program_name: str = "Rewards"
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    webhooks: tuple[WebhookChannel, ...] = ()
    email: EmailChannel | None = None
    loyalty: LoyaltySync | None = None
    downgrade_warning: DowngradeWarningSettings = Field(default_factory=DowngradeWarningSettings)
    milestones: MilestoneSettings = Field(default_factory=MilestoneSettings)
    campaigns: dict[str, CampaignSettings] = Field(
        default_factory=lambda: {"gold_retention": CampaignSettings()}
    )

    @model_validator(mode="after")
    def _names_unique(self) -> ChannelsConfig:
        names = self.channel_names()
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"channel names must be unique, repeated: {duplicates}")
        return self

    def warning_rule(self) -> tuple[str, float]:
        """The grace-end warning's kind and lead time: ``milestones.will_downgrade`` when set,
        else ``downgrade_warning`` (one rule, so a customer never gets both)."""
        if self.milestones.will_downgrade is not None:
            return "will_downgrade", self.milestones.will_downgrade.days_before
        return "downgrade_warning", self.downgrade_warning.days_before

    def channel_names(self) -> list[str]:
        names = [w.name for w in self.webhooks]
        if self.email is not None:
            names.append(self.email.name)
        if self.loyalty is not None:
            names.append(self.loyalty.name)
        return names

    def campaign(self, name: str | None) -> tuple[str, CampaignSettings]:
        """The named campaign (the only one when ``name`` is None)."""
        if name is None:
            if len(self.campaigns) != 1:
                raise ChannelsError(
                    f"several campaigns are configured ({sorted(self.campaigns)}): choose one with --campaign"
                )
            name = next(iter(self.campaigns))
        if name not in self.campaigns:
            raise ChannelsError(
                f"no campaign {name!r} in the channels file; have {sorted(self.campaigns)}"
            )
        return name, self.campaigns[name]


def require_env(variable: str, where: str) -> str:
    """A secret from the environment, or a clear error naming the variable and the key."""
    value = os.environ.get(variable)
    if not value:
        raise ChannelsError(f"environment variable {variable} ({where}) is not set")
    return value


def parse_channels(
    data: Any, source: str = "channels", base_dir: Path | None = None
) -> ChannelsConfig:
    """Validate a channels mapping; relative file paths are resolved against ``base_dir``."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ChannelsError(
            f"{source}: expected a mapping of channel settings, got {type(data).__name__}"
        )
    _refuse_inline_secrets(data, source)
    try:
        config = ChannelsConfig.model_validate(data)
    except ValidationError as exc:
        raise ChannelsError(f"{source}: invalid channels file: {_describe(exc)}") from None
    return _resolve_paths(config, base_dir) if base_dir is not None else config


def load_channels(path: str | Path) -> ChannelsConfig:
    """Read and validate a channels YAML file."""
    path = Path(path)
    data = read_yaml(path, "channels file", ChannelsError)
    return parse_channels(data, source=str(path), base_dir=path.parent)


def find_channels_file(
    given: Path | None, env_path: Path | None, policy_path: Path | None
) -> Path | None:
    """``--channels``, else ``TIER_ML_CHANNELS``, else ``channels.yaml`` beside the policy file."""
    if given is not None:
        return given
    if env_path is not None:
        return env_path
    if policy_path is not None:
        beside = Path(policy_path).with_name(CHANNELS_FILE_NAME)
        if beside.is_file():
            return beside
    return None


def _refuse_inline_secrets(data: dict[str, Any], source: str) -> None:
    """A secret written into the file is an error that says how to do it instead."""
    sections: list[tuple[str, Any]] = [
        (f"webhooks[{i}]", w) for i, w in enumerate(data.get("webhooks") or [])
    ]
    sections += [("email", data.get("email")), ("loyalty", data.get("loyalty"))]
    for where, section in sections:
        if isinstance(section, dict):
            for key in ("secret", "password", "username"):
                if key in section:
                    raise ChannelsError(
                        f"{source}: {where}.{key}: secrets are read from the environment only; "
                        f"name the variable with {key}_env"
                    )


def _resolve_paths(config: ChannelsConfig, base_dir: Path) -> ChannelsConfig:
    if config.email is None:
        return config
    updates = {}
    for name in ("recipients_file", "templates_dir", "ca_file"):
        value = getattr(config.email, name)
        if value is not None and not value.is_absolute():
            updates[name] = base_dir / value
    if not updates:
        return config
    return config.model_copy(update={"email": config.email.model_copy(update=updates)})


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(item) for item in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)
