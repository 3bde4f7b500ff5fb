"""The store's tier ledger (``tier_ml.store.explain.customer_ledger``) against the store itself:
its sums are the stored qualifying and pending spend, and every transition it lists is a tier
change in the audit log (and every rules change in the audit log is listed)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from tests.integration.store.support import END_OF_SIMULATION, simulated, stream
from tier_ml.cli import app
from tier_ml.events import parse_instant
from tier_ml.money import MICROS_PER_DAY, micros_to_money
from tier_ml.policy import load_policy
from tier_ml.store import service
from tier_ml.store.explain import customer_ledger
from tier_ml.store.service import StoreError

LATER = END_OF_SIMULATION + 20 * MICROS_PER_DAY


def audit_keys(audit) -> dict[str, set[tuple]]:
    keys: dict[str, set[tuple]] = {}
    for row in audit.itertuples(index=False):
        keys.setdefault(row.customer_id, set()).add((int(row.at_us), row.old_tier, row.new_tier))
    return keys


def test_every_listed_transition_is_in_the_audit_log(engine) -> None:
    _, rows = simulated(150)
    stream(engine, rows, size=500, policy=load_policy(None))
    service.sweep(engine, END_OF_SIMULATION)
    tiers = service.export_tiers(engine, END_OF_SIMULATION).set_index("customer_id")
    audit = service.export_audit(engine)
    audit["at_us"] = audit["at"].map(parse_instant)
    recorded = audit_keys(audit)
    corrections = 0
    for customer_id, row in tiers.iterrows():
        ledger = customer_ledger(engine, customer_id, END_OF_SIMULATION)
        assert micros_to_money(ledger.counted_sum_us) == pytest.approx(row["qualifying_spend"])
        assert micros_to_money(ledger.pending_sum_us) == pytest.approx(row["pending_spend"])
        assert ledger.effective_tier == ledger.tier == row["tier"]
        listed = {(t.at_us, t.old_tier, t.new_tier) for t in ledger.transitions if t.effective}
        assert listed == recorded[customer_id], customer_id
        rules = [t for t in ledger.transitions if t.source == "rules"]
        assert len(rules) == row["tier_changes"]  # every change of the engine, recorded or not
        corrections += sum(not t.effective for t in rules)
    assert corrections > 0  # the time-ordered stream has events later than a sweep


def test_overrides_and_their_rules_changes_are_told_apart(engine) -> None:
    _, rows = simulated(150)
    service.apply_events(engine, list(rows), END_OF_SIMULATION, load_policy(None))
    tiers = service.export_tiers(engine, END_OF_SIMULATION)
    customer = tiers.loc[tiers["pending_spend"] > 0, "customer_id"].iloc[0]
    service.set_override(
        engine, customer, "VIP", "alice", "goodwill", END_OF_SIMULATION, until_us=LATER
    )
    during = customer_ledger(engine, customer, END_OF_SIMULATION + MICROS_PER_DAY)
    assert during.effective_tier == "VIP" and during.hold.kind == "override"
    assert during.hold.actor == "alice" and during.hold.until_us == LATER
    override = [t for t in during.transitions if t.source == "override"]
    assert override and override[-1].new_tier == "VIP" and override[-1].actor == "alice"
    service.sweep(engine, LATER + MICROS_PER_DAY)
    after = customer_ledger(engine, customer, LATER + MICROS_PER_DAY)
    assert after.hold is None and after.effective_tier == after.tier
    hidden = [t for t in after.transitions if not t.effective]
    assert all(END_OF_SIMULATION <= t.at_us < LATER for t in hidden)
    audit = service.export_audit(engine)
    audit = audit[audit["customer_id"] == customer]
    assert "override_expired" in set(audit["cause"]) or after.tier == "VIP"
    expired = [t for t in after.transitions if "override_expired" in t.causes]
    assert len(expired) == int((audit["cause"] == "override_expired").sum())


def test_store_ledger_errors(engine) -> None:
    with pytest.raises(StoreError, match="empty"):
        customer_ledger(engine, "nobody", END_OF_SIMULATION)
    _, rows = simulated(150)
    service.apply_events(engine, list(rows), END_OF_SIMULATION, load_policy(None))
    with pytest.raises(StoreError, match="unknown customer"):
        customer_ledger(engine, "nobody", END_OF_SIMULATION)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_explain_from_store_and_from_file(engine, store_url, tmp_path) -> None:
    events, rows = simulated(150)
    service.apply_events(engine, list(rows), END_OF_SIMULATION, load_policy(None))
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    customer = service.export_tiers(engine, END_OF_SIMULATION)["customer_id"].iloc[3]
    runner = CliRunner()
    as_of = "2026-01-01T00:00:00Z"
    from_store = runner.invoke(
        app, ["explain", customer, "--as-of", as_of, "--db", store_url, "--json"]
    )
    from_file = runner.invoke(
        app, ["explain", customer, "--as-of", as_of, "--events", str(path), "--json"]
    )
    assert from_store.exit_code == 0 and from_file.exit_code == 0, (
        from_store.output + from_file.output
    )
    stored, filed = json.loads(from_store.stdout), json.loads(from_file.stdout)
    for key in ("tier", "qualifying", "pending", "orders", "next_tier", "keep", "projected"):
        assert stored[key] == filed[key], key
    text = runner.invoke(app, ["explain", customer, "--as-of", as_of, "--events", str(path)])
    assert text.exit_code == 0 and "Tier transitions" in text.stdout and customer in text.stdout
    bad = runner.invoke(app, ["explain", customer, "--as-of", "soon", "--events", str(path)])
    assert bad.exit_code == 2 and "--as-of" in bad.output
    both = runner.invoke(app, ["explain", customer, "--events", str(path), "--db", store_url])
    assert both.exit_code == 2 and "not both" in both.output
    unknown = runner.invoke(app, ["explain", "nobody", "--as-of", as_of, "--db", store_url])
    assert unknown.exit_code == 2 and "unknown customer" in unknown.output
