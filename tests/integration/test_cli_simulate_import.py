"""`tier-ml simulate` and `tier-ml import` end to end: real files, real exit codes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from click.testing import Result
from typer.testing import CliRunner

from tier_ml.cli import app
from tier_ml.events import frame_records, read_events, validate
from tier_ml.policy import load_policy

runner = CliRunner()


def said(result: Result) -> str:
    """The command's output with rich's line wrapping undone."""
    return " ".join(result.output.split())


def test_simulate_writes_events_and_truth_reproducibly(tmp_path: Path) -> None:
    args = ["simulate", "--customers", "300", "--seed", "9", "--start", "2024-01-01"]
    first = runner.invoke(app, [*args, "--end", "2024-12-31", "--out", str(tmp_path / "a.csv")])
    second = runner.invoke(app, [*args, "--end", "2024-12-31", "--out", str(tmp_path / "b.csv")])

    assert first.exit_code == second.exit_code == 0, first.output
    assert "events for 300 customers" in said(first)
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    truth = pd.read_parquet(tmp_path / "a_truth.parquet")
    assert len(truth) == 300
    events = read_events(tmp_path / "a.csv")
    assert events["occurred_at"].str.startswith("2024").mean() > 0.99


def test_simulate_with_scale_and_truth_path(tmp_path: Path) -> None:
    out, truth = tmp_path / "events.parquet", tmp_path / "latent" / "truth.parquet"
    result = runner.invoke(
        app,
        ["simulate", "-n", "200", "--scale", "1.5", "--out", str(out), "--truth", str(truth)],
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(truth)) == 300
    assert len(pd.read_parquet(out)) > 300


def test_simulate_rejects_bad_options(tmp_path: Path) -> None:
    backwards = runner.invoke(app, ["simulate", "--start", "2025-01-01", "--end", "2024-01-01"])
    assert backwards.exit_code == 2
    assert "before start" in said(backwards)
    not_a_date = runner.invoke(app, ["simulate", "--start", "2025-13-01"])
    assert not_a_date.exit_code == 2
    wrong_suffix = runner.invoke(app, ["simulate", "--out", str(tmp_path / "events.txt")])
    assert wrong_suffix.exit_code == 2


def test_import_converts_an_export_and_reports_rejects(tmp_path: Path) -> None:
    source = tmp_path / "export.csv"
    source.write_text(
        "OrderNo;CustID;OrderDate;Total;Type\n"
        "1001;17;03.02.2025;€1.234,50;Sale\n"
        "1001;17;05.02.2025;€234,50;Return\n"
        "1002;18;04.02.2025 13:05;99,00;Sale\n"
        "1003;;04.02.2025;10,00;Sale\n"
        "1004;19;tomorrow;10,00;Sale\n",
        encoding="utf-8",
    )
    out, rejects = tmp_path / "events.csv", tmp_path / "rejects.csv"
    result = runner.invoke(
        app,
        [
            "import",
            str(source),
            "--map",
            "order_id=OrderNo",
            "--map",
            "customer_id=CustID",
            "--map",
            "occurred_at=OrderDate",
            "-m",
            "amount=Total",
            "--decimal-comma",
            "--currency",
            "EUR",
            "--channel",
            "pos",
            "--region",
            "EU",
            "--return-column",
            "Type",
            "--return-value",
            "Return",
            "--out",
            str(out),
            "--rejects",
            str(rejects),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "imported 3 of 5 rows" in said(result)
    validation = validate(frame_records(read_events(out)), load_policy())
    assert not validation.rejects
    kinds = sorted((e.order_id, str(e.event_type), e.amount) for e in validation.events)
    assert kinds == [
        ("1001", "placed", 1234.5),
        ("1001", "refunded", 234.5),
        ("1002", "placed", 99),
    ]
    assert pd.read_csv(rejects)["reason"].tolist() == ["missing_field", "unparseable_time"]


def test_import_round_trips_a_simulation(tmp_path: Path) -> None:
    events = tmp_path / "sim.csv"
    assert runner.invoke(app, ["simulate", "-n", "150", "--out", str(events)]).exit_code == 0
    out = tmp_path / "imported.parquet"
    result = runner.invoke(app, ["import", str(events), "--out", str(out)])
    assert result.exit_code == 0, result.output
    policy = load_policy()
    before = validate(frame_records(read_events(events)), policy).events
    after = validate(frame_records(read_events(out)), policy).events
    assert [e.event_id for e in before] == [e.event_id for e in after]


def test_import_fails_with_one_line_for_bad_input(tmp_path: Path) -> None:
    source = tmp_path / "export.csv"
    source.write_text("CustID,OrderDate,Total\n1,2025-01-01,5\n", encoding="utf-8")
    out = str(tmp_path / "events.parquet")
    bad_map = runner.invoke(app, ["import", str(source), "--out", out, "--map", "customer_id"])
    assert bad_map.exit_code == 2
    assert "FIELD=COLUMN" in said(bad_map)
    no_column = runner.invoke(app, ["import", str(source), "--out", out, "-m", "amount=Sum"])
    assert no_column.exit_code == 2
    assert "no such column" in said(no_column)
    missing = runner.invoke(app, ["import", str(tmp_path / "nope.csv"), "--out", out])
    assert missing.exit_code == 2
    assert "no such file" in said(missing)


def test_help_explains_the_commands() -> None:
    for command, words in (("simulate", "ground truth"), ("import", "retailer's export")):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert words in said(result)


def test_outputs_never_overwrite_the_inputs_or_each_other(tmp_path: Path) -> None:
    same = runner.invoke(
        app, ["simulate", "--customers", "5", "--out", str(tmp_path / "e.csv"), "--truth", str(tmp_path / "e.csv")]
    )
    assert same.exit_code == 2 and "is the same file as --out" in said(same)
    assert not (tmp_path / "e.csv").exists()
    folder = tmp_path / "folder.parquet"
    folder.mkdir()
    into_folder = runner.invoke(app, ["simulate", "--customers", "5", "--out", str(folder)])
    assert into_folder.exit_code == 2 and "is a folder" in said(into_folder)
    assert "Traceback" not in into_folder.output
    source = tmp_path / "export.csv"
    source.write_text("customer_id,occurred_at,amount\nC1,2025-01-01,5\n", encoding="utf-8")
    onto_source = runner.invoke(app, ["import", str(source), "--out", str(source), "--currency", "USD"])
    assert onto_source.exit_code == 2 and "is the same file as the export" in said(onto_source)
    assert source.read_text(encoding="utf-8").startswith("customer_id,occurred_at,amount\nC1")


def test_import_refuses_a_date_format_strptime_cannot_use(tmp_path: Path) -> None:
    source = tmp_path / "export.csv"
    source.write_text("customer_id,occurred_at,amount\nC1,01.02.2025,5\n", encoding="utf-8")
    out = str(tmp_path / "events.parquet")
    for fmt, message in [("%Q", "is not a strptime format"), ("", "has no strptime directive")]:
        result = runner.invoke(
            app, ["import", str(source), "--out", out, "--currency", "USD", "--date-format", fmt]
        )
        assert result.exit_code == 2 and f"--date-format {fmt!r}" in said(result), result.output
        assert message in said(result) and "Traceback" not in result.output
    good = runner.invoke(
        app, ["import", str(source), "--out", out, "--currency", "USD", "--date-format", "%d.%m.%Y"]
    )
    assert good.exit_code == 0 and "imported 1 of 1 rows" in said(good)


def test_import_of_order_lines_in_cp1252(tmp_path: Path) -> None:
    """A Windows line-item export: --encoding, --quantity and --lines from the command line."""
    source = tmp_path / "lines.csv"
    source.write_bytes(
        "Rechnung;Menge;Datum;Preis;Kunde;Land\r\n"
        "R1;2;03.02.2025;9,95;K1;Österreich\r\nR1;1;03.02.2025;5,10;K1;Österreich\r\n".encode("cp1252")
    )
    out = tmp_path / "events.csv"
    args = ["import", str(source), "--out", str(out), "--encoding", "cp1252", "--decimal-comma",
            "--quantity", "Menge", "--lines", "--currency", "EUR",
            "-m", "order_id=Rechnung", "-m", "occurred_at=Datum", "-m", "amount=Preis",
            "-m", "customer_id=Kunde", "-m", "region=Land"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # the console wraps long lines
    assert "imported 2 of 2 rows" in said and "as 1 orders and refunds; 0 rejected" in said
    events = pd.read_csv(out, dtype=str)
    assert events[["order_id", "amount", "region"]].values.tolist() == [["R1", "25", "Österreich"]]


def test_import_skip_and_the_day_first_note_from_the_command_line(tmp_path: Path) -> None:
    source = tmp_path / "orders.csv"
    source.write_text("Order,Customer,Date,Total,Status\nA1,c1,13/01/2025,10,paid\nA2,c2,02/01/2025,5,Cancelled\n"
                      "A3,c3,25/01/2025,7,paid\n", encoding="utf-8")
    out = tmp_path / "events.csv"
    args = ["import", str(source), "--out", str(out), "--currency", "EUR", "--skip", "Status=cancelled",
            "-m", "order_id=Order", "-m", "customer_id=Customer", "-m", "occurred_at=Date", "-m", "amount=Total"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "note: dates read day first" in said
    assert "imported 2 of 3 rows" in said and "1 skipped (--skip); 0 rejected" in said
    assert pd.read_csv(out, dtype=str)["order_id"].tolist() == ["A1", "A3"]
    bad = runner.invoke(app, [*args[:6], "--skip", "Status"])
    assert bad.exit_code == 2 and "must look like COLUMN=VALUE" in " ".join(bad.output.split())
