"""The store commands end to end through the ``tier-ml`` CLI: real store, real files, exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import Result
from typer.testing import CliRunner

from tests.integration.store.support import END_OF_SIMULATION, assert_same_tiers, simulated
from tier_ml.batch import classify_frame
from tier_ml.cli import app
from tier_ml.policy import DEFAULT_POLICY_PATH, load_policy
from tier_ml.store.service import export_tiers, open_store

runner = CliRunner()
NOW = "2026-01-01T00:00:00Z"
PAYLOADS = Path(__file__).resolve().parents[2] / "fixtures" / "payloads"


def said(result: Result) -> str:
    return " ".join(result.output.split())


def run(*args: str) -> Result:
    return runner.invoke(app, list(args))


@pytest.fixture
def events_file(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    events, _ = simulated(200)
    path = tmp_path / "events.csv"
    events.to_csv(path, index=False)
    return path, events


def test_ingest_export_and_replay(store_url: str, events_file, tmp_path: Path) -> None:
    path, events = events_file
    first = run("ingest", str(path), "--now", NOW, "--db", store_url)
    assert first.exit_code == 0, first.output
    assert "accepted" in said(first) and "rejected" in said(first)
    again = run("ingest", str(path), "--now", NOW, "--db", store_url)
    assert again.exit_code == 0 and " 0 accepted" in said(again)

    out = tmp_path / "tiers.csv"
    exported = run("tiers", "export", "--now", NOW, "--out", str(out), "--db", store_url)
    assert exported.exit_code == 0, exported.output
    expected, _ = classify_frame(load_policy(None), events, END_OF_SIMULATION)
    assert_same_tiers(
        pd.read_csv(out, dtype={"region": str}, keep_default_na=False, na_values=[""]), expected
    )


def test_tiers_export_writes_the_file_classify_writes(store_url: str, events_file, tmp_path) -> None:
    """The same bytes in CSV and JSON lines (money with two decimals), the same column types
    in Parquet."""
    import pyarrow.parquet as pq

    path, _ = events_file
    assert run("ingest", str(path), "--now", NOW, "--db", store_url).exit_code == 0
    for suffix in ("csv", "jsonl", "parquet"):
        exported, classified = tmp_path / f"export.{suffix}", tmp_path / f"classify.{suffix}"
        assert run("tiers", "export", "--now", NOW, "-o", str(exported), "--db", store_url).exit_code == 0
        assert run("classify", "--events", str(path), "--as-of", NOW, "--out", str(classified)).exit_code == 0
        if suffix != "parquet":
            assert exported.read_bytes() == classified.read_bytes()
        else:
            ours, theirs = pq.read_table(exported), pq.read_table(classified)
            assert [(f.name, f.type) for f in ours.schema] == [(f.name, f.type) for f in theirs.schema]
            assert ours.to_pylist() == theirs.to_pylist()


def test_a_csv_row_with_more_fields_than_the_header_is_rejected_as_classify_rejects_it(
    store_url: str, tmp_path: Path
) -> None:
    """Its values are shifted (an unquoted comma): the store must not take them as read."""
    header = "event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region"
    path = tmp_path / "events.csv"
    path.write_text(f"{header}\ne1,placed,o1,C1,2025-01-10T10:00:00Z,25000,USD,web,US,\n"
                    "e2,placed,o2,C2,2025-01-10T10:00:00Z,40,USD,web,shop,EU\n")
    ingested = run("ingest", str(path), "--now", NOW, "--db", store_url)
    assert ingested.exit_code == 0 and "1 accepted" in said(ingested), ingested.output
    rejects = tmp_path / "rejects.jsonl"
    assert run("rejects", "export", "-o", str(rejects), "--db", store_url).exit_code == 0
    rows = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["event_id"], r["reason"], r["region"]) for r in rows] == [("e2", "malformed_row", "shop")]
    assert "'EU' after the last column" in rows[0]["detail"]
    exported, classified = tmp_path / "export.csv", tmp_path / "classify.csv"
    assert run("tiers", "export", "--now", NOW, "-o", str(exported), "--db", store_url).exit_code == 0
    assert run("classify", "--events", str(path), "--as-of", NOW, "--out", str(classified)).exit_code == 0
    assert exported.read_bytes() == classified.read_bytes()


def test_sweep_policy_audit_and_overrides(store_url: str, events_file, tmp_path: Path) -> None:
    path, _ = events_file
    assert run("ingest", str(path), "--now", NOW, "--db", store_url).exit_code == 0
    swept = run("sweep", "--now", "2026-01-20", "--db", store_url)
    assert swept.exit_code == 0 and "swept" in said(swept)

    customer = "C0000003"
    set_result = run(
        "override", "set", customer, "VIP", "--reason", "press partner", "--actor", "alice",
        "--until", "2026-03-01", "--now", "2026-01-20", "--db", store_url,
    )  # fmt: skip
    assert set_result.exit_code == 0, set_result.output
    listed = run("override", "list", "--now", "2026-01-21", "--db", store_url)
    assert customer in said(listed) and "active" in said(listed)

    policy = tmp_path / "new.yaml"
    policy.write_text(
        "tiers:\n  - name: Silver\n  - name: Gold\n    min_spend: 10000\n  - name: VIP\n    min_spend: 30000\n"
    )
    dry = run("policy", "apply", str(policy), "--dry-run", "--now", "2026-01-20", "--db", store_url)
    assert dry.exit_code == 0, dry.output
    assert "Transitions (dry run)" in said(dry) and "would change tier" in said(dry)
    applied = run(
        "policy", "apply", str(policy), "--actor", "bob", "--now", "2026-01-20", "--db", store_url
    )
    assert applied.exit_code == 0 and "stored policy version 2" in said(applied)
    shown = run("policy", "show", "--db", store_url)
    assert "active: version 2" in said(shown) and "min_spend: 30000" in shown.output

    csv_out, jsonl_out = tmp_path / "audit.csv", tmp_path / "audit.jsonl"
    assert run("audit", "export", "--out", str(csv_out), "--db", store_url).exit_code == 0
    assert (
        run(
            "audit", "export", "--format", "jsonl", "--out", str(jsonl_out), "--db", store_url
        ).exit_code
        == 0
    )
    audit = pd.read_csv(csv_out)
    lines = [json.loads(line) for line in jsonl_out.read_text().splitlines()]
    assert len(lines) == len(audit) > 0
    assert set(audit["reason"]) >= {"enrolment", "upgrade", "override", "reclassification"}
    override_row = next(r for r in lines if r["reason"] == "override")
    assert (override_row["actor"], override_row["note"], override_row["customer_id"]) == (
        "alice",
        "press partner",
        customer,
    )
    recent = run("audit", "export", "--since", "2026-01-20", "--format", "jsonl", "--db", store_url)
    assert recent.exit_code == 0
    recorded = [json.loads(line)["recorded_at"] for line in recent.stdout.splitlines()]
    assert recorded and all(at >= "2026-01-20" for at in recorded) and len(recorded) < len(lines)

    cleared = run(
        "override",
        "clear",
        customer,
        "--reason",
        "=HYPERLINK(\"http://x\")",
        "--actor",
        "alice",
        "--now",
        "2026-01-22",
        "--db",
        store_url,
    )
    assert cleared.exit_code == 0, cleared.output
    # A reason that a spreadsheet would run as a formula is shown as text in the CSV only.
    assert run("audit", "export", "--out", str(csv_out), "--db", store_url).exit_code == 0
    csv_notes = pd.read_csv(csv_out)["note"].dropna().tolist()
    assert csv_notes[-1] == "'=HYPERLINK(\"http://x\")"
    raw = run("audit", "export", "--format", "jsonl", "--db", store_url).stdout.splitlines()
    assert json.loads(raw[-1])["note"] == "=HYPERLINK(\"http://x\")"


def test_ingest_channel_payloads(store_url: str) -> None:
    now = "2025-03-10T00:00:00Z"
    for channel, name in [
        ("shopify", "shopify_orders_create.json"),
        ("shopify", "shopify_refunds_create.json"),
        ("pos", "pos_export.csv"),
        ("marketplace", "marketplace_feed.json"),
        ("app", "app_events.json"),
    ]:
        result = run(
            "ingest", str(PAYLOADS / name), "--channel", channel, "--now", now, "--db", store_url
        )
        assert result.exit_code == 0, result.output
    engine = open_store(store_url)
    try:
        tiers = export_tiers(engine).set_index("customer_id")
    finally:
        engine.dispose()
    # Shopify: 1849.90 EUR less the 200.00 EUR refund (found through the order), at 1.10
    assert tiers.loc["7208214823133", "qualifying_spend"] == round(1649.90 * 1.10, 2)
    assert tiers.loc["L-0042", "qualifying_spend"] == 0.0  # placed in March, still pending
    assert tiers.loc["L-0042", "pending_spend"] == round(100.00 * 1.10, 2)
    assert "L-0077" in tiers.index  # voided: nothing counts, still a customer
    assert tiers.loc["C0001", "pending_spend"] == round(30.00 * 1.10 + 129.99 - 29.99, 2)
    assert tiers.loc["C0002", "pending_spend"] == 0.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "--now", "31/12/2025"], "--now '31/12/2025' is not an ISO 8601 time"),
        (["ingest", "missing.csv", "--now", NOW], "no such events file"),
        (["ingest", "x.json", "--channel", "fax", "--now", NOW], "no adapter for channel 'fax'"),
        (
            ["override", "set", "nobody", "Gold", "--reason", "x", "--now", NOW],
            "no order in the store",
        ),
        (["audit", "export", "--format", "xml"], "--format must be csv or jsonl"),
        (["tiers", "export", "--now", "2020-01-01"], "cannot report the earlier instant"),
    ],
)
def test_user_errors_are_one_line(
    store_url: str, events_file, args: list[str], message: str
) -> None:
    path, _ = events_file
    assert run("ingest", str(path), "--now", NOW, "--db", store_url).exit_code == 0
    result = run(*args, "--db", store_url)
    assert result.exit_code == 2, result.output
    assert message in said(result)
    assert "Traceback" not in result.output


def test_a_bad_database_url_is_one_line() -> None:
    result = run("sweep", "--now", NOW, "--db", "mysql://nowhere/x")
    assert result.exit_code == 2 and "unsupported database" in said(result)


def test_worker_sweeps_with_the_real_clock(store_url: str, events_file) -> None:
    path, _ = events_file
    assert run("ingest", str(path), "--now", NOW, "--db", store_url).exit_code == 0
    result = run("worker", "--iterations", "2", "--interval", "0", "--db", store_url)
    assert result.exit_code == 0, result.output
    assert "swept" in said(result)  # the wall clock is past the simulated year: maturities are due


def test_a_file_that_is_not_the_channels_payload_is_one_line(
    events_file, tmp_path: Path
) -> None:
    """A wrong file with --channel fails with its reason; nothing is silently read as nothing."""
    url = f"sqlite:///{tmp_path / 'store.sqlite'}"
    path, _ = events_file  # canonical events, not a POS export: every row would be "anonymous"
    binary = tmp_path / "orders.json"
    binary.write_bytes(b"\x00\xff\xfe not json")
    odd = tmp_path / "odd.json"
    odd.write_text(json.dumps([{"id": 1, "customer": 5, "line_items": "none"}]))
    cases = [
        (path, "pos", "not a POS export: no column receipt_id, loyalty_id"),
        (binary, "shopify", "not UTF-8 text"),
        (odd, "shopify", "not a valid shopify payload"),
    ]
    for file, channel, message in cases:
        result = run("ingest", str(file), "--channel", channel, "--now", NOW, "--db", url)
        assert result.exit_code == 2 and message in said(result), (channel, result.output)
        assert "Traceback" not in result.output


def test_exports_to_a_place_that_cannot_be_written_are_one_line(
    store_url: str, events_file, tmp_path: Path
) -> None:
    path, _ = events_file
    assert run("ingest", str(path), "--now", NOW, "--db", store_url).exit_code == 0
    folder = tmp_path / "exports.csv"
    folder.mkdir()
    for args in (["tiers", "export", "--now", NOW], ["audit", "export"]):
        result = run(*args, "--out", str(folder), "--db", store_url)
        assert result.exit_code == 2 and "is a folder" in said(result), result.output
        assert "Traceback" not in result.output
    movers = run(
        "policy", "apply", str(DEFAULT_POLICY_PATH), "--dry-run", "--movers", str(folder),
        "--now", NOW, "--db", store_url,
    )
    assert movers.exit_code == 2 and "--movers" in said(movers) and "is a folder" in said(movers)


def test_bad_input_in_events_overrides_keys_and_outbox_is_one_line(
    store_url: str, tmp_path: Path
) -> None:
    """An event holding NUL is rejected alone (the good ones are stored); an override takes
    the tier in any letter case and refuses a --now before the customer's last evaluation;
    bad scopes and outbox kinds are one line, exit 2."""
    from tier_ml.store.service import export_audit, export_ledger

    def event(i: int, **fields: str) -> dict[str, str]:
        base = {"event_id": f"e{i}", "event_type": "placed", "order_id": f"o{i}",
                "customer_id": f"C{i}", "occurred_at": "2025-06-01T10:00:00Z", "amount": "120",
                "currency": "USD"}  # fmt: skip
        return {**base, **fields}

    events = tmp_path / "events.jsonl"
    rows = [event(1), event(2, customer_id="C\x002"), event(3)]
    events.write_text("".join(json.dumps(row) + "\n" for row in rows))
    ingested = run("ingest", str(events), "--now", "2025-07-01", "--db", store_url)
    assert ingested.exit_code == 0, ingested.output
    assert "2 accepted" in said(ingested) and "1 rejected (unsupported_character 1)" in said(ingested)

    cased = run("override", "set", "C1", "gOLD", "--reason", "goodwill", "--now", "2025-07-02",
                "--db", store_url)  # fmt: skip
    assert cased.exit_code == 0 and "C1 is Gold until cleared" in said(cased), cased.output
    past = run("override", "set", "C3", "VIP", "--reason", "goodwill", "--now", "2025-06-20",
               "--db", store_url)  # fmt: skip
    assert past.exit_code == 2, past.output
    assert "is before the store's clock for customer C3 (2025-07-01T00:00:00Z" in said(past)
    unknown = run("override", "set", "C3", "Platinum", "--reason", "x", "--now", "2025-07-02",
                  "--db", store_url)  # fmt: skip
    assert unknown.exit_code == 2 and "the policy's tiers are Silver, Gold, VIP" in said(unknown)
    engine = open_store(store_url)
    try:
        assert sorted(export_ledger(engine)["event_id"]) == ["e1", "e3"]
        assert export_audit(engine).query("reason == 'override'")["new_tier"].tolist() == ["Gold"]
    finally:
        engine.dispose()

    for args, message in [
        (["apikey", "create", "--name", "crm", "--scopes", "a,,"], "unknown scope 'a'; valid scopes: events:write, tiers:read"),
        (["apikey", "create", "--name", "crm", "--scopes", "tiers:read,,"], "scope 2 is empty"),
        (["apikey", "create", "--name", "crm", "--scopes", "tiers:read, "], "scope 2 is empty"),
        (["apikey", "create", "--name", "crm", "--scopes", "tiers: read"], "'tiers: read'"),
        (["outbox", "list", "--kind", "welcom"], "unknown kind 'welcom'; known: welcome,"),
    ]:
        result = run(*args, "--db", store_url)
        assert result.exit_code == 2, (args, result.output)
        assert message in said(result) and len(result.output.strip().splitlines()) == 1
    spaced = run("apikey", "create", "--name", "crm", "--scopes", " tiers:read , admin",
                 "--db", store_url)  # fmt: skip
    assert spaced.exit_code == 0 and "scopes admin, tiers:read" in said(spaced), spaced.output


def test_a_csv_field_holding_nul_is_rejected_whole_not_cut(store_url: str, tmp_path: Path) -> None:
    """pandas' fast CSV parser ends a field at NUL: "C\\x002" was stored as customer "C"."""
    path = tmp_path / "events.csv"
    path.write_bytes(
        b"event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region\n"
        b"e1,placed,o1,C\x002,2025-01-01T00:00:00Z,10,USD,web,\n"
        b"e2,placed,o2,C3,2025-01-01T00:00:00Z,10,USD,web,\n"
    )
    result = run("ingest", str(path), "--now", NOW, "--db", store_url)
    assert result.exit_code == 0, result.output
    assert "1 accepted" in said(result) and "unsupported_character" in said(result)
    out = tmp_path / "tiers.csv"
    assert run("tiers", "export", "--now", NOW, "--out", str(out), "--db", store_url).exit_code == 0
    assert list(pd.read_csv(out)["customer_id"]) == ["C3"]  # and no customer "C"


def test_rejected_events_are_exported_and_can_be_ingested_again(store_url: str, tmp_path: Path) -> None:
    """Orders in a currency the policy had no rate for: exported with their reason, ingested
    again after a version adds the rate, the store equals `classify` under that version."""
    import yaml

    rules = {"base_currency": "USD", "fx_rates": {"EUR": 1.1}, "buffer_days": 0,
             "downgrade_grace_days": 0, "tiers": [{"name": "Base"}, {"name": "Silver", "min_spend": 50}]}  # fmt: skip
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text(yaml.safe_dump(rules))
    second.write_text(yaml.safe_dump({**rules, "fx_rates": {"EUR": 1.1, "JPY": 0.0067}}))
    events = tmp_path / "events.csv"
    events.write_text(
        "event_id,event_type,order_id,customer_id,occurred_at,amount,currency,channel,region\n"
        "e1,placed,o1,c1,2025-01-01T00:00:00Z,10,USD,web,=HYPERLINK(1)\n"
        "e2,placed,o2,c1,2025-01-02T00:00:00Z,10000,JPY,web,=HYPERLINK(1)\n"
        "e3,placed,o3,c2,2025-01-02T00:00:00Z,9000,jpy,pos,\n"
        "e4,placed,o4,c2,2025-01-03T00:00:00Z,-5,USD,pos,\n"
        "e5,refunded,o2,c1,2025-01-03T00:00:00Z,20,USD,web,\n"  # of the yen order
    )
    db = ["--db", store_url]
    assert run("ingest", str(events), "--policy", str(first), "--now", "2025-01-05", *db).exit_code == 0
    assert run("policy", "apply", str(second), "--actor", "ann", "--now", "2025-01-06", *db).exit_code == 0

    csv_out, again = tmp_path / "rejects.csv", tmp_path / "again.jsonl"
    assert run("rejects", "export", "-o", str(csv_out), *db).exit_code == 0
    listed = pd.read_csv(csv_out, dtype=str, keep_default_na=False)
    assert list(listed["reason"]) == [
        "unknown_currency", "unknown_currency", "non_positive_amount", "unknown_order"
    ]  # fmt: skip
    assert list(listed["event_id"]) == ["e2", "e3", "e4", "e5"]
    assert listed["region"][0] == "'=HYPERLINK(1)"
    reasons = ["--reason", "unknown_currency", "--reason", "unknown_order"]
    exported = run("rejects", "export", *reasons, "-o", str(again), *db)
    assert exported.exit_code == 0 and "3 rejected events" in said(exported)
    assert run("ingest", str(again), "--now", "2025-01-07", *db).exit_code == 0

    tiers, expected = tmp_path / "tiers.csv", tmp_path / "classify.csv"
    assert run("tiers", "export", "--now", "2025-01-08", "-o", str(tiers), *db).exit_code == 0
    classified = run("classify", "--policy", str(second), "--events", str(events), "--as-of", "2025-01-08",
                     "--out", str(expected))  # fmt: skip
    assert classified.exit_code == 0, classified.output
    assert tiers.read_bytes() == expected.read_bytes()
    refused = run("rejects", "export", "--reason", "too_expensive", *db)
    assert refused.exit_code != 0 and "not a reject reason" in said(refused)
