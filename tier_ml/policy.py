"""The tier policy: the YAML file of TIER_RULES.md as a validated, immutable model.

A policy says how spend becomes a tier: the buffer before revenue counts, the
optional rolling window, what late refunds do, the downgrade grace period, the
tier ladder with its thresholds, regional threshold overrides and the fx rates
into the base currency. Marketing edits it; the engine only reads it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tier_ml.money import days_to_micros, to_micros
from tier_ml.yaml_files import read_yaml

DEFAULT_POLICY_PATH = Path(__file__).parent / "data" / "default_policy.yaml"


class PolicyError(ValueError):
    """A policy file that cannot be used, with a message a person can act on."""


class Tier(BaseModel):
    """One rung of the tier ladder."""

    model_config = ConfigDict(frozen=True, extra="allow")

    name: str = Field(min_length=1)
    min_spend: float | None = Field(
        default=None, ge=0, description="Qualifying spend needed, base currency."
    )
    min_orders: int | None = Field(
        default=None, ge=0, description="Qualifying orders needed (optional)."
    )
    perks: dict[str, Any] = Field(
        default_factory=dict, description="Free-form perks shown to customers."
    )


class Policy(BaseModel):
    """A validated tier policy. Unknown top-level keys are kept (the project adds some)."""

    model_config = ConfigDict(frozen=True, extra="allow")

    base_currency: str = Field(default="USD", min_length=3, max_length=3)
    fx_rates: dict[str, float] = Field(default_factory=dict)
    buffer_days: float = Field(default=14, ge=0)
    window_days: float | None = Field(default=None, gt=0)
    late_refunds: Literal["deduct", "ignore"] = "deduct"
    downgrade_grace_days: float = Field(default=90, ge=0)
    tiers: list[Tier] = Field(min_length=1)
    regions: dict[str, dict[str, float]] = Field(default_factory=dict)

    @field_validator("base_currency")
    @classmethod
    def _upper_base(cls, value: str) -> str:
        return value.strip().upper()

    @field_validator("fx_rates")
    @classmethod
    def _rates_positive(cls, rates: dict[str, float]) -> dict[str, float]:
        cleaned: dict[str, float] = {}
        for code, rate in rates.items():
            if rate is None or not rate > 0:
                raise ValueError(f"fx rate for {code} must be a positive number, got {rate!r}")
            cleaned[str(code).strip().upper()] = float(rate)
        return cleaned

    @model_validator(mode="after")
    def _ladder_is_consistent(self) -> Policy:
        names = [tier.name for tier in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        default = self.tiers[0]
        if default.min_spend not in (None, 0) or default.min_orders not in (None, 0):
            raise ValueError(
                f"the first tier ({default.name}) is the default tier: it takes no min_spend or min_orders"
            )
        for tier in self.tiers[1:]:
            if tier.min_spend is None:
                raise ValueError(f"tier {tier.name} needs a min_spend")
        _check_increasing("tiers", [(t.name, t.min_spend or 0.0) for t in self.tiers[1:]])
        for region, overrides in self.regions.items():
            unknown = sorted(set(overrides) - set(names))
            if unknown:
                raise ValueError(
                    f"regions.{region} names unknown tiers {unknown}; tiers are {names}"
                )
            if default.name in overrides:
                raise ValueError(
                    f"regions.{region} sets {default.name}, the default tier, which has no threshold"
                )
            for tier_name, spend in overrides.items():
                if spend is None or spend < 0:
                    raise ValueError(f"regions.{region}.{tier_name} must be >= 0, got {spend!r}")
            ladder = [(t.name, overrides.get(t.name, t.min_spend or 0.0)) for t in self.tiers[1:]]
            _check_increasing(f"regions.{region}", ladder)
        rate = self.fx_rates.get(self.base_currency)
        if rate is not None and rate != 1.0:
            raise ValueError(
                f"fx_rates.{self.base_currency} is the base currency; its rate must be 1"
            )
        return self

    # Derived, engine-facing values: integers in micro-units and microseconds.

    @property
    def tier_names(self) -> list[str]:
        return [tier.name for tier in self.tiers]

    @property
    def default_tier(self) -> str:
        return self.tiers[0].name

    @cached_property
    def buffer_us(self) -> int:
        return days_to_micros(self.buffer_days)

    @cached_property
    def window_us(self) -> int | None:
        return None if self.window_days is None else days_to_micros(self.window_days)

    @cached_property
    def grace_us(self) -> int:
        return days_to_micros(self.downgrade_grace_days)

    def rate(self, currency: str) -> float | None:
        """Base-currency units per unit of ``currency``; None when the policy has no rate.

        Spaces around the code are ignored, as around every field; other whitespace (a
        tab, a no-break space) is part of the text, as on the batch path.
        """
        code = currency.strip(" ").upper()
        if code == self.base_currency:
            return 1.0
        return self.fx_rates.get(code)

    def min_spend(self, tier_index: int, region: str | None) -> float:
        """The spend threshold of a tier for a region (regional override first)."""
        tier = self.tiers[tier_index]
        override = self.regions.get(region or "", {}).get(tier.name)
        return float(override if override is not None else (tier.min_spend or 0.0))

    @cached_property
    def _threshold_table(self) -> dict[str, tuple[int, ...]]:
        table = {"": tuple(to_micros(self.min_spend(i, None)) for i in range(len(self.tiers)))}
        for region in self.regions:
            table[region] = tuple(
                to_micros(self.min_spend(i, region)) for i in range(len(self.tiers))
            )
        return table

    def thresholds_us(self, region: str | None) -> tuple[int, ...]:
        """Per-tier min_spend in micro-units for ``region`` (index 0, the default tier, is 0)."""
        return self._threshold_table.get(region or "", self._threshold_table[""])

    @cached_property
    def min_orders_list(self) -> tuple[int, ...]:
        return tuple(tier.min_orders or 0 for tier in self.tiers)

    def eligible_tier(self, qualifying_us: int, qualifying_orders: int, region: str | None) -> int:
        """Index of the highest tier whose spend and order thresholds are both met (rule 6)."""
        thresholds = self.thresholds_us(region)
        for index in range(len(self.tiers) - 1, 0, -1):
            if (
                qualifying_us >= thresholds[index]
                and qualifying_orders >= self.min_orders_list[index]
            ):
                return index
        return 0

    def rules_dict(self) -> dict[str, Any]:
        """The fields that decide tiers (perks and other added keys excluded)."""
        return {
            "base_currency": self.base_currency,
            "fx_rates": dict(sorted(self.fx_rates.items())),
            "buffer_days": self.buffer_days,
            "window_days": self.window_days,
            "late_refunds": self.late_refunds,
            "downgrade_grace_days": self.downgrade_grace_days,
            "tiers": [
                {"name": t.name, "min_spend": t.min_spend, "min_orders": t.min_orders}
                for t in self.tiers
            ],
            "regions": {r: dict(sorted(o.items())) for r, o in sorted(self.regions.items())},
        }

    @cached_property
    def fingerprint(self) -> str:
        """A short hash of the rule-deciding fields: equal fingerprints, equal tiers."""
        canonical = json.dumps(self.rules_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _check_increasing(where: str, ladder: list[tuple[str, float]]) -> None:
    for (low_name, low), (high_name, high) in itertools.pairwise(ladder):
        if not high > low:
            raise ValueError(
                f"{where}: min_spend must increase up the ladder, but {high_name} ({high:g}) "
                f"is not above {low_name} ({low:g})"
            )


def parse_policy(data: Any, source: str = "policy") -> Policy:
    """Validate a policy mapping, turning pydantic's errors into one readable message."""
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping of policy keys, got {type(data).__name__}")
    try:
        return Policy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: invalid policy: {_describe(exc)}") from None


def load_policy(path: str | Path | None = None) -> Policy:
    """Read and validate a policy YAML file (the packaged default when ``path`` is None)."""
    path = Path(path) if path is not None else DEFAULT_POLICY_PATH
    return parse_policy(read_yaml(path, "policy file", PolicyError), source=str(path))


def _describe(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        location = ".".join(str(item) for item in error["loc"])
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts)
