"""``tier-ml explain CUSTOMER``: the tier ledger of one customer, as text or JSON.

From an events file (``--events``, with ``--policy``) or from the tier store
(``--db`` or the default store; the store's active policy, overrides and
grandfathering included). The ledger itself is ``tier_ml.ledger`` (events
file) or ``tier_ml.store.explain.customer_ledger`` (store); this module only
parses options and prints.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from tier_ml.ledger import TierLedger


def register(app: typer.Typer) -> None:
    """Add ``explain`` to the ``tier-ml`` app."""
    app.command("explain")(explain_command)


def explain_command(
    customer: Annotated[str, typer.Argument(help="The customer id.")],
    as_of: Annotated[
        str | None,
        typer.Option(
            "--as-of",
            help="Explain the tier at this instant (ISO 8601; a date alone is its start, 00:00 UTC). "
            "Default: now.",
        ),
    ] = None,
    events: Annotated[
        Path | None,
        typer.Option(
            "--events", "-e", help="Events file (.csv, .jsonl, .parquet) instead of the store."
        ),
    ] = None,
    db: Annotated[
        str | None,
        typer.Option(
            "--db",
            help="Store URL (default: $TIER_ML_DATABASE_URL, else sqlite:///tier_ml.sqlite). "
            "Used when --events is not given.",
        ),
    ] = None,
    policy: Annotated[
        Path | None,
        typer.Option(
            "--policy",
            "-p",
            help="Policy YAML for --events (default: the packaged policy). "
            "The store always uses its active policy.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the ledger as JSON instead of text.")
    ] = False,
) -> None:
    """Explain a customer's tier: which orders count, when each cleared the buffer, what
    refunds removed, which orders left the window, every tier change with its rule, and
    what it takes to reach the next tier and to keep the current one.

    Computed by the rules engine itself, so it always agrees with `classify` and
    the store.
    """
    from tier_ml.cli import fail, load_policy_or_exit, parse_instant_or_exit

    as_of_us = parse_instant_or_exit(as_of, "--as-of")
    if events is not None and db is not None:
        raise fail("give --events or --db, not both")
    if events is None and policy is not None:
        raise fail("--policy goes with --events; the store uses its active policy")
    if events is not None:
        ledger = _from_events(customer, events, load_policy_or_exit(policy), as_of_us)
    else:
        ledger = _from_store(customer, db, as_of_us)
    if as_json:
        typer.echo(json.dumps(ledger.to_dict(), indent=2))
    else:
        print_ledger(ledger)


def _from_events(customer: str, path: Path, policy: object, as_of_us: int) -> TierLedger:
    from tier_ml.cli import fail
    from tier_ml.events import EventReadError, read_events
    from tier_ml.ledger import LedgerError, customer_events, explain

    try:
        frame = read_events(path)
    except EventReadError as exc:
        raise fail(str(exc)) from None
    found = customer_events(frame, policy, customer, as_of_us)  # type: ignore[arg-type]
    try:
        return explain(policy, customer, found, as_of_us)  # type: ignore[arg-type]
    except LedgerError as exc:
        raise fail(f"{path}: {exc}") from None


def _from_store(customer: str, db: str | None, as_of_us: int) -> TierLedger:
    from tier_ml.commands.store import _open, _store_errors
    from tier_ml.store.explain import customer_ledger

    engine = _open(db)
    with _store_errors():
        return customer_ledger(engine, customer, as_of_us)


def _console() -> Console:
    from rich.console import Console

    return Console()


def print_ledger(ledger: TierLedger) -> None:
    """The ledger as rich text on stdout: a summary, the orders, the transitions, the targets."""
    from rich.table import Table

    from tier_ml.ledger import CAUSE_LABELS, iso, render_text
    from tier_ml.money import micros_to_money

    console = _console()
    cur = ledger.base_currency

    def money(micros: int) -> str:
        return f"{micros_to_money(micros):,.2f}"

    header = render_text(ledger).split("\n\n")[0]
    console.print(header + "\n", highlight=False)

    orders = Table(title=f"Orders ({cur})", title_justify="left")
    for name in ("order", "placed", "value", "clears buffer", "leaves window", "status"):
        orders.add_column(name)
    orders.add_column("counts", justify="right")
    orders.add_column("pending", justify="right")
    orders.add_column("refunds and cancels")
    for order in ledger.orders:
        adjustments = "; ".join(
            f"{a.event_type} {money(a.removed_us)} on {iso(a.at_us)} ({a.effect.replace('_', ' ')})"
            for a in order.adjustments
        )
        orders.add_row(
            order.order_id,
            iso(order.placed_at_us),
            money(order.value_us),
            iso(order.matures_at_us),
            iso(order.leaves_window_at_us) or "",
            order.status,
            money(order.counted_us),
            money(order.pending_us),
            adjustments,
        )
    orders.add_row(
        "total", "", "", "", "", "", money(ledger.counted_sum_us), money(ledger.pending_sum_us), ""
    )
    console.print(orders)

    changes = Table(title="Tier transitions", title_justify="left")
    for name in ("at", "from", "to", "cause", "rule"):
        changes.add_column(name)
    for item in ledger.transitions:
        causes = ", ".join(CAUSE_LABELS.get(c, c) for c in item.causes)
        if not item.effective:
            causes += " (not in force)"
        changes.add_row(
            iso(item.at_us), item.old_tier or "-", item.new_tier or "-", causes, item.rule
        )
    console.print(changes)

    if ledger.projected:
        ahead = Table(title="If nothing else happens", title_justify="left")
        for name in ("at", "from", "to", "cause", "rule"):
            ahead.add_column(name)
        for item in ledger.projected:
            ahead.add_row(
                iso(item.at_us),
                item.old_tier or "-",
                item.new_tier or "-",
                ", ".join(CAUSE_LABELS.get(c, c) for c in item.causes),
                item.rule,
            )
        console.print(ahead)

    tail = render_text(ledger).rstrip("\n").split("\n\n")[-1]
    console.print(tail, highlight=False)
