"""Small, tricky, seeded event sets for property tests of the rules engine.

Unlike the simulator (realistic data), this generator aims at edges: refunds at
the instant of maturity, cancels, region switches, replays, conflicting replays,
orders placed exactly one grace period apart, and malformed rows.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from tier_ml.policy import Policy, parse_policy

START = datetime(2024, 1, 1, tzinfo=UTC)


def iso(instant: datetime) -> str:
    return instant.strftime("%Y-%m-%dT%H:%M:%SZ")


def random_policy(rng: random.Random) -> Policy:
    tiers: list[dict[str, Any]] = [{"name": "Base"}, {"name": "Silver", "min_spend": 300}]
    top: dict[str, Any] = {"name": "Gold", "min_spend": rng.choice([700, 1000])}
    if rng.random() < 0.5:
        top["min_orders"] = rng.choice([2, 3])
    tiers.append(top)
    data: dict[str, Any] = {
        "base_currency": "USD",
        "fx_rates": {"EUR": 1.1, "GBP": 1.3},
        "buffer_days": rng.choice([0, 1, 7, 14]),
        "window_days": rng.choice([None, None, 30, 90, 365]),
        "late_refunds": rng.choice(["deduct", "ignore"]),
        "downgrade_grace_days": rng.choice([0, 10, 30, 90]),
        "tiers": tiers,
    }
    if rng.random() < 0.5:
        data["regions"] = {"EU": {"Silver": 250, "Gold": 600}}
    return parse_policy(data)


def random_events(
    rng: random.Random, customers: int = 5, max_orders: int = 12, days: int = 400
) -> list[dict[str, str]]:
    """Raw rows (all strings) for a few customers, including replays and bad rows."""
    rows: list[dict[str, str]] = []
    next_id = 0

    def event(**fields: str) -> dict[str, str]:
        nonlocal next_id
        next_id += 1
        base = {"event_id": f"e{next_id}", "channel": rng.choice(["web", "pos", "app"])}
        base.update(fields)
        return base

    for c in range(customers):
        customer = f"c{c}"
        when = START + timedelta(days=rng.randrange(0, 60), hours=rng.randrange(24))
        for o in range(rng.randrange(1, max_orders + 1)):
            order = f"{customer}-o{o}"
            currency = rng.choice(["USD", "USD", "EUR", "GBP"])
            amount = rng.choice([rng.randrange(10, 400), rng.randrange(1, 50_000) / 100])
            region = rng.choice(["US", "US", "EU", ""])
            rows.append(
                event(
                    event_type="placed",
                    order_id=order,
                    customer_id=customer,
                    occurred_at=iso(when),
                    amount=f"{amount}",
                    currency=currency,
                    region=region,
                )
            )
            for _ in range(rng.choice([0, 0, 0, 1, 2])):
                later = when + timedelta(
                    days=rng.choice([0, 1, 6, 7, 13, 14, 20, 60]), hours=rng.choice([0, 0, 5])
                )
                if rng.random() < 0.25:
                    rows.append(
                        event(
                            event_type="cancelled",
                            order_id=order,
                            customer_id=customer,
                            occurred_at=iso(later),
                            amount="",
                            currency="",
                            region=region,
                        )
                    )
                else:
                    part = round(amount * rng.choice([0.1, 0.5, 1.0, 1.5]), 2) or 1
                    rows.append(
                        event(
                            event_type="refunded",
                            order_id=order,
                            customer_id=customer,
                            occurred_at=iso(later),
                            amount=f"{part}",
                            currency=currency,
                            region=region,
                        )
                    )
            gap = rng.choice([0, 1, 5, 10, 29, 30, 31, 45, 89, 90, 91, 120, 200])
            when = when + timedelta(days=gap, hours=rng.choice([0, 0, 3]))
            if (when - START).days > days:
                break
    for row in rng.sample(rows, k=min(len(rows), 3)):
        rows.append(dict(row))  # exact replays
    if rows and rng.random() < 0.5:
        conflicting = dict(rng.choice(rows))
        conflicting["amount"] = "9999"
        rows.append(conflicting)
    bad = [
        {
            "event_type": "placed",
            "order_id": "x1",
            "customer_id": "c0",
            "occurred_at": "2024-02-30T00:00:00Z",
            "amount": "5",
            "currency": "USD",
        },
        {
            "event_type": "placed",
            "order_id": "x2",
            "customer_id": "c0",
            "occurred_at": iso(START),
            "amount": "0",
            "currency": "USD",
        },
        {
            "event_type": "placed",
            "order_id": "x3",
            "customer_id": "c0",
            "occurred_at": iso(START),
            "amount": "5",
            "currency": "JPY",
        },
        {
            "event_type": "refunded",
            "order_id": "nope",
            "customer_id": "c0",
            "occurred_at": iso(START),
            "amount": "5",
            "currency": "USD",
        },
        {
            "event_type": "shipped",
            "order_id": "x4",
            "customer_id": "c0",
            "occurred_at": iso(START),
            "amount": "5",
            "currency": "USD",
        },
        {
            "event_type": "placed",
            "order_id": "x5",
            "customer_id": "",
            "occurred_at": iso(START),
            "amount": "5",
            "currency": "USD",
        },
        {
            "event_type": "placed",
            "order_id": "x6",
            "customer_id": "c1",
            "occurred_at": iso(START),
            "amount": "abc",
            "currency": "USD",
        },
    ]
    placed = [r for r in rows if r["event_type"] == "placed"]
    if placed and rng.random() < 0.5:
        again = dict(rng.choice(placed))
        bad.append(
            {**{k: v for k, v in again.items() if k != "event_id"}, "amount": "77"}
        )  # duplicate_order
    if placed and rng.random() < 0.5:
        other = dict(rng.choice(placed))
        bad.append(
            {
                "event_type": "refunded",
                "order_id": other["order_id"],
                "customer_id": "someone-else",
                "occurred_at": other["occurred_at"],
                "amount": "1",
                "currency": "USD",
            }
        )  # customer_mismatch
    for row in rng.sample(bad, k=rng.randrange(0, 4)):
        rows.append(event(**row))
    rng.shuffle(rows)
    return rows


def as_of_instants(rng: random.Random, count: int = 3) -> list[datetime]:
    return [
        START + timedelta(days=rng.randrange(0, 500), hours=rng.choice([0, 12]))
        for _ in range(count)
    ]
