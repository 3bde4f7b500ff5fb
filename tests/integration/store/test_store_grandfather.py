"""Rule-change preview and grandfathering (``preview_policy``, ``apply_policy(grandfather_until_us=)``).

- the preview (and ``--dry-run``) counts who moves as a plain application of
  the new policy would, and writes nothing;
- with grandfathering nobody covered drops below their tier before the date;
  from the date on (the sweep re-evaluates them then) every tier equals a plain
  application of the new policy (``classify``), on SQLite and PostgreSQL;
- the choice is audited.
"""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.integration.store.support import (
    END_OF_SIMULATION,
    assert_same_tiers,
    simulated,
    snapshot,
)
from tier_ml.batch import classify_frame
from tier_ml.cli import app
from tier_ml.events import parse_instant
from tier_ml.money import MICROS_PER_DAY
from tier_ml.policy import load_policy, parse_policy
from tier_ml.store import service
from tier_ml.store.explain import customer_ledger
from tier_ml.store.grandfather import MOVER_COLUMNS, floors_frame, policy_choices
from tier_ml.store.service import StoreError
from tier_ml.store.unit_of_work import run_in_transaction

STRICTER = parse_policy(
    {
        "base_currency": "USD",
        "fx_rates": {"EUR": 1.05, "GBP": 1.25},
        "buffer_days": 14,
        "window_days": 365,
        "downgrade_grace_days": 30,
        "tiers": [
            {"name": "Silver"},
            {"name": "Gold", "min_spend": 25000},
            {"name": "VIP", "min_spend": 60000},
        ],
    }
)
DAY = MICROS_PER_DAY
START = END_OF_SIMULATION
UNTIL = START + 60 * DAY
RANK = {name: i for i, name in enumerate(STRICTER.tier_names)}


@pytest.fixture
def loaded(engine):
    events, rows = simulated(300)
    service.apply_events(engine, list(rows), START, load_policy(None))
    return engine, events


def floors(engine) -> pd.DataFrame:
    return run_in_transaction(engine, lambda uow: floors_frame(uow.repo), read_only=True)


def plain(events: pd.DataFrame, at_us: int) -> pd.DataFrame:
    return classify_frame(STRICTER, events, at_us)[0]


def test_preview_counts_who_moves_and_writes_nothing(loaded) -> None:
    engine, events = loaded
    before = snapshot(engine)
    preview = service.preview_policy(engine, STRICTER, START, grandfather_until_us=UNTIL, sample=5)
    old = service.export_tiers(engine, START).set_index("customer_id")
    new = plain(events, START).set_index("customer_id")["tier"]
    expected = pd.crosstab(old["tier"].rename("old tier"), new.rename("new tier"))
    pd.testing.assert_frame_equal(preview.matrix, expected, check_names=False)
    moved = old.index[old["tier"] != new.reindex(old.index)]
    assert sorted(preview.movers["customer_id"]) == sorted(moved) and len(moved) > 0
    assert list(preview.movers.columns[: len(MOVER_COLUMNS)]) == list(MOVER_COLUMNS)
    revenue = old["qualifying_spend"] + old["pending_spend"]
    assert preview.revenue_share == pytest.approx(revenue[moved].sum() / revenue.sum(), abs=1e-6)
    assert 0 < preview.revenue_share < 1
    assert len(preview.sample) == 5
    assert preview.sample["revenue"].is_monotonic_decreasing
    downs = preview.movers[preview.movers["direction"] == "downgrade"]
    assert preview.held == len(downs) > 0  # every downgrade is held by grandfathering
    assert downs["grandfathered_until"].notna().all()
    # with grandfathering, right after applying nobody is lower than before
    now = preview.matrix_now
    for old_tier, row in now.iterrows():
        for new_tier, count in row.items():
            if count:
                assert RANK[new_tier] >= RANK[old_tier]
    data = preview.to_dict()
    assert data["movers"] == len(moved) and len(data["sample"]) == 5
    after = snapshot(engine)
    for key in ("ledger", "audit", "outbox", "policies"):
        assert after[key] == before[key], key
    pd.testing.assert_frame_equal(after["states"], before["states"])
    assert floors(engine).empty


def test_grandfathered_members_keep_their_tier_until_the_date(loaded) -> None:
    engine, events = loaded
    old = service.export_tiers(engine, START).set_index("customer_id")["tier"]
    result = service.apply_policy(
        engine,
        STRICTER,
        "carol",
        START,
        grandfather_until_us=UNTIL,
        note="announced in the newsletter",
    )
    granted = floors(engine)
    covered = granted.set_index("customer_id")["tier"]
    assert set(covered.index) == set(old.index[old != "Silver"])
    assert (covered == old[covered.index]).all()

    for at_us in (START, START + 10 * DAY, START + 31 * DAY, UNTIL - 1):
        service.sweep(engine, at_us)
        tiers = service.export_tiers(engine, at_us).set_index("customer_id")["tier"]
        expected = plain(events, at_us).set_index("customer_id")["tier"]
        for customer_id, tier in tiers.items():
            floor = covered.get(customer_id)
            want = expected[customer_id]
            if floor is not None and RANK[want] < RANK[floor]:
                want = floor  # held by grandfathering
            assert tier == want, (customer_id, at_us)
        assert all(RANK[tiers[c]] >= RANK[t] for c, t in covered.items())

    at_until = plain(events, UNTIL).set_index("customer_id")["tier"]
    held = [c for c, t in covered.items() if RANK[at_until[c]] < RANK[t]]
    assert held
    for at_us in (UNTIL, UNTIL + 45 * DAY):
        service.sweep(engine, at_us)
        assert_same_tiers(service.export_tiers(engine, at_us), plain(events, at_us))

    audit = service.export_audit(engine)
    start_rows = audit[(audit["reason"] == "grandfathering") & (audit["cause"] == "policy")]
    assert len(start_rows) == result.preview.held > 0
    assert set(start_rows["actor"]) == {"carol"} and set(start_rows["policy_version"]) == {2}
    assert start_rows["note"].str.contains("announced in the newsletter").all()
    assert (start_rows["old_tier"] == start_rows["new_tier"]).all()
    ends = audit[audit["cause"] == "grandfather_end"]
    assert set(ends["customer_id"]) <= set(covered.index) and len(ends) > 0
    assert set(ends["at"]) == {service.iso_instant(UNTIL)}
    versions = run_in_transaction(engine, lambda uow: policy_choices(uow.repo), read_only=True)
    assert versions[2]["grandfather_until_us"] == UNTIL and "newsletter" in versions[2]["note"]
    assert versions[1]["grandfather_until_us"] is None

    # every change the ledger lists as in force is a row of the audit log
    audit["at_us"] = audit["at"].map(parse_instant)
    recorded = set(
        zip(audit["customer_id"], audit["at_us"], audit["old_tier"], audit["new_tier"], strict=True)
    )
    for customer_id in covered.index:
        ledger = customer_ledger(engine, customer_id, UNTIL + 45 * DAY)
        for t in ledger.transitions:
            if t.effective:
                assert (customer_id, t.at_us, t.old_tier, t.new_tier) in recorded, (customer_id, t)

    # the ledger explains it: held until the date, then the plain rules
    customer = held[0]
    after = customer_ledger(engine, customer, UNTIL + 45 * DAY)
    assert after.hold is None and after.effective_tier == after.tier
    ended = [t for t in after.transitions if "grandfather_end" in t.causes]
    assert len(ended) == 1 and ended[0].old_tier == covered[customer]


def test_ledger_shows_the_grandfathered_hold(loaded) -> None:
    engine, _ = loaded
    service.apply_policy(engine, STRICTER, "carol", START, grandfather_until_us=UNTIL)
    preview_held = service.export_audit(engine)
    held = preview_held[preview_held["reason"] == "grandfathering"]["customer_id"].iloc[0]
    ledger = customer_ledger(engine, held, START + DAY)
    assert ledger.hold is not None and ledger.hold.kind == "grandfathering"
    assert ledger.hold.until_us == UNTIL and RANK[ledger.effective_tier] > RANK[ledger.tier]
    assert ledger.to_dict()["hold"]["until"] == service.iso_instant(UNTIL)


def test_bad_grandfathering_is_refused(loaded) -> None:
    engine, _ = loaded
    with pytest.raises(StoreError, match="must be after"):
        service.apply_policy(engine, STRICTER, "carol", START, grandfather_until_us=START)
    renamed = parse_policy({"tiers": [{"name": "Basic"}, {"name": "Plus", "min_spend": 20000}]})
    with pytest.raises(StoreError, match="does not have"):
        service.preview_policy(engine, renamed, START, grandfather_until_us=UNTIL)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_cli_dry_run_prints_the_preview_and_writes_movers(loaded, store_url, tmp_path) -> None:
    engine, _ = loaded
    path = tmp_path / "stricter.yaml"
    path.write_text(
        "fx_rates: {EUR: 1.05, GBP: 1.25}\nbuffer_days: 14\nwindow_days: 365\n"
        "downgrade_grace_days: 30\ntiers:\n  - name: Silver\n  - name: Gold\n    min_spend: 25000\n"
        "  - name: VIP\n    min_spend: 60000\n"
    )
    movers = tmp_path / "movers.csv"
    runner = CliRunner()
    args = ["policy", "apply", str(path), "--now", "2026-01-01", "--db", store_url]
    dry = runner.invoke(
        app, [*args, "--dry-run", "--grandfather-until", "2026-03-02", "--movers", str(movers)]
    )
    assert dry.exit_code == 0, dry.output
    assert "Transitions (dry run)" in dry.output and "of the revenue" in dry.output
    assert "Movers, largest revenue first" in dry.output and "members covered" in dry.output
    frame = pd.read_csv(movers)
    assert list(frame.columns) == list(MOVER_COLUMNS) and len(frame) > 0
    assert floors(engine).empty
    assert len(service.policy_versions(engine)[0]) == 1
    bad = runner.invoke(app, [*args, "--grandfather-until", "someday"])
    assert bad.exit_code == 2 and "--grandfather-until" in bad.output
    past = runner.invoke(app, [*args, "--grandfather-until", "2025-12-01"])
    assert past.exit_code == 2 and "must be after" in past.output
    applied = runner.invoke(
        app, [*args, "--grandfather-until", "2026-03-02", "--actor", "dan", "--note", "spring"]
    )
    assert applied.exit_code == 0 and "stored policy version 2" in applied.output
    assert not floors(engine).empty
