"""Importing retailers' exports: formats, defaults, generated ids, returns and rejects."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from tier_ml.events import OrderEvent, Validation, frame_records, read_events, validate
from tier_ml.importer import ExportError, ImportResult, import_export, write_import
from tier_ml.policy import load_policy
from tier_ml.simulate import SimulationConfig, simulate, write_simulation

RETAIL_MAP = {"customer_id": "CustID", "occurred_at": "OrderDate", "amount": "Total"}


def export(tmp_path: Path, rows: list[dict[str, str]], name: str = "export.csv") -> Path:
    path = tmp_path / name
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def contents(events: list[OrderEvent]) -> list[tuple[object, ...]]:
    fields = ("event_id", "order_id", "customer_id", "at_us", "amount_us", "currency")
    return sorted(
        (str(e.event_type), *(getattr(e, name) for name in fields), e.channel, e.region)
        for e in events
    )


def validated(path: Path) -> Validation:
    return validate(frame_records(read_events(path)), load_policy())


def one(result: ImportResult) -> pd.Series:
    assert len(result.events) == 1, result.rejects.to_dict("records")
    return result.events.iloc[0]


# --- round trips of simulator output ------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_import_round_trips_simulator_output(tmp_path: Path, suffix: str) -> None:
    sim = simulate(SimulationConfig(customers=300, seed=4))
    source = write_simulation(sim, tmp_path / f"sim{suffix}").events
    result = import_export(source)  # columns already carry canonical names
    write_import(result, tmp_path / "imported.parquet")

    assert contents(validated(tmp_path / "imported.parquet").events) == contents(
        validated(source).events
    )
    caught = {"unparseable_time", "missing_customer_id", "non_positive_amount"}
    expected = sim.malformed[sim.malformed["kind"].isin(caught)]
    reason = "reason" if suffix == ".csv" else "reason_typed"
    got = dict(zip(result.rejects["event_id"], result.rejects["reason"], strict=True))
    assert got == dict(zip(expected["event_id"], expected[reason], strict=True))


def test_reimport_gives_the_same_generated_ids(tmp_path: Path) -> None:
    rows = [
        {"CustID": "7", "OrderDate": "2025-02-03", "Total": "10.00"},
        {"CustID": "7", "OrderDate": "2025-02-03", "Total": "10.00"},  # a second, identical order
        {"CustID": "8", "OrderDate": "2025-02-04", "Total": "12.50"},
    ]
    path = export(tmp_path, rows)
    first = import_export(path, RETAIL_MAP, currency="USD")
    moved = export(tmp_path, rows, name="renamed.csv")
    second = import_export(moved, RETAIL_MAP, currency="USD")

    assert first.events["event_id"].tolist() == second.events["event_id"].tolist()
    assert first.events["event_id"].nunique() == 3
    assert (first.events["event_type"] == "placed").all()
    assert first.events["order_id"].nunique() == 3  # each row is an order of its own


# --- formats ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "options", "expected"),
    [
        ("2025-02-03", {}, "2025-02-03T00:00:00"),
        ("2025-02-03T10:15:00+01:00", {}, "2025-02-03T09:15:00"),
        ("2025/02/03 13:05", {}, "2025-02-03T13:05:00"),
        ("03.02.2025", {}, "2025-02-03T00:00:00"),
        ("03.02.2025 07:08:09", {}, "2025-02-03T07:08:09"),
        ("2/3/2025 4:05 PM", {}, "2025-02-03T16:05:00"),
        ("03/02/2025", {"day_first": True}, "2025-02-03T00:00:00"),
        ("03-02-2025", {"day_first": True}, "2025-02-03T00:00:00"),
        ("3 Feb 2025", {}, "2025-02-03T00:00:00"),
        ("Feb 3, 2025 10:00", {}, "2025-02-03T10:00:00"),
        ("Feb 3 2025", {}, "2025-02-03T00:00:00"),
        ("1738540800", {}, "2025-02-03T00:00:00"),
        ("1738540800000", {}, "2025-02-03T00:00:00"),
        ("03|02|25", {"date_format": "%d|%m|%y"}, "2025-02-03T00:00:00"),
        ("2025-03-01 10:00", {"timezone": "Europe/Berlin"}, "2025-03-01T09:00:00"),
        ("20250203T101500+0100", {}, "2025-02-03T09:15:00"),  # ISO 8601's basic format
        ("20250203", {}, "2025-02-03T00:00:00"),
        ("20250301T1000", {"timezone": "Europe/Berlin"}, "2025-03-01T09:00:00"),
        ("2025-02-03T10:15:00,5Z", {}, "2025-02-03T10:15:00.5"),  # a decimal comma
    ],
)
def test_dates_in_common_formats(
    tmp_path: Path, text: str, options: dict[str, object], expected: str
) -> None:
    path = export(tmp_path, [{"CustID": "1", "OrderDate": text, "Total": "5"}])
    result = import_export(path, RETAIL_MAP, currency="USD", **options)  # type: ignore[arg-type]
    event = one(result)
    assert event["occurred_at"] == pd.Timestamp(expected, tz="UTC")


@pytest.mark.parametrize(
    ("text", "decimal_comma", "amount", "currency"),
    [
        ("$1,234.50", False, 1234.5, "USD"),
        ("€1.234,50", True, 1234.5, "EUR"),
        ("1 234,50 €", True, 1234.5, "EUR"),
        ("£ 99", False, 99.0, "GBP"),
        ("USD 1'000.25", False, 1000.25, "USD"),
        ("12.5", False, 12.5, "CHF"),  # no symbol: the default currency
    ],
)
def test_amounts_with_symbols_and_separators(
    tmp_path: Path, text: str, decimal_comma: bool, amount: float, currency: str
) -> None:
    path = export(tmp_path, [{"CustID": "1", "OrderDate": "2025-01-01", "Total": text}])
    default = "CHF" if currency == "CHF" else None
    event = one(import_export(path, RETAIL_MAP, currency=default, decimal_comma=decimal_comma))
    assert event["amount"] == pytest.approx(amount)
    assert event["currency"] == currency


def test_defaults_fill_only_what_the_export_lacks(tmp_path: Path) -> None:
    rows = [
        {"CustID": "1", "OrderDate": "2025-01-01", "Total": "5", "Cur": "EUR", "Shop": ""},
        {"CustID": "2", "OrderDate": "2025-01-02", "Total": "6", "Cur": "", "Shop": "POS"},
    ]
    path = export(tmp_path, rows)
    result = import_export(
        path,
        {**RETAIL_MAP, "currency": "Cur", "channel": "Shop"},
        currency="USD",
        channel="web",
        region="US",
    )
    assert result.events["currency"].tolist() == ["EUR", "USD"]
    assert result.events["channel"].tolist() == ["web", "pos"]
    assert result.events["region"].tolist() == ["US", "US"]


def test_returns_become_refunds_of_their_order(tmp_path: Path) -> None:
    rows = [
        {"Order": "A1", "CustID": "1", "OrderDate": "2025-01-01", "Total": "100", "Kind": "Sale"},
        {"Order": "A1", "CustID": "1", "OrderDate": "2025-01-03", "Total": "-40", "Kind": "Sale"},
        {"Order": "A1", "CustID": "1", "OrderDate": "2025-01-04", "Total": "10", "Kind": "Return"},
    ]
    path = export(tmp_path, rows)
    mapping = {**RETAIL_MAP, "order_id": "Order"}
    result = import_export(
        path,
        mapping,
        currency="USD",
        returns="negative",
        return_column="Kind",
        return_values=("return",),
    )
    assert result.events["event_type"].tolist() == ["placed", "refunded", "refunded"]
    assert result.events["amount"].tolist() == [100.0, 40.0, 10.0]
    assert set(result.events["order_id"]) == {"A1"}
    write_import(result, tmp_path / "events.csv")
    assert len(validated(tmp_path / "events.csv").events) == 3

    strict = import_export(path, mapping, currency="USD")
    assert strict.rejects["reason"].tolist() == ["non_positive_amount"]


# --- rejects ----------------------------------------------------------------------------------


def test_each_malformed_kind_is_rejected_with_its_reason(tmp_path: Path) -> None:
    good = {"CustID": "1", "OrderDate": "2025-01-01", "Total": "5", "Type": "order", "Cur": "USD"}
    bad = {
        "missing_field": {"CustID": ""},
        "unparseable_time": {"OrderDate": "31.02.2025"},
        "unparseable_amount": {"Total": "five"},
        "non_positive_amount": {"Total": "0"},
        "unknown_event_type": {"Type": "gift"},
        "unknown_currency": {"Cur": "JPY"},
    }
    rows = [good] + [{**good, **change} for change in bad.values()] + [good]
    rows.append({**good, "Type": "refund"})  # a refund without its order: missing_field
    path = export(tmp_path, rows)
    mapping = {**RETAIL_MAP, "event_type": "Type", "currency": "Cur"}
    result = import_export(path, mapping, policy=load_policy())

    assert result.rejects["reason"].tolist() == [*bad, "missing_field"]
    assert result.rejects["row"].tolist() == [2, 3, 4, 5, 6, 7, 9]
    assert result.rejects["detail"].str.len().gt(0).all()
    assert "CustID" in result.rejects.columns  # the source row, to fix the export
    assert len(result.events) == 2
    write_import(result, tmp_path / "events.parquet", tmp_path / "rejects.csv")
    assert len(validated(tmp_path / "events.parquet").events) == 2
    assert len(pd.read_csv(tmp_path / "rejects.csv")) == 7


def test_bad_mapping_and_unreadable_files_fail_with_a_message(tmp_path: Path) -> None:
    path = export(tmp_path, [{"CustID": "1", "OrderDate": "2025-01-01", "Total": "5"}])
    with pytest.raises(ExportError, match="no such column"):
        import_export(path, {**RETAIL_MAP, "customer_id": "Customer"})
    with pytest.raises(ExportError, match="unknown fields"):
        import_export(path, {**RETAIL_MAP, "shop": "Total"})
    with pytest.raises(ExportError, match="no column for"):
        import_export(path, {"customer_id": "CustID"})
    with pytest.raises(ExportError, match="no such file"):
        import_export(tmp_path / "missing.csv", RETAIL_MAP)
    broken = tmp_path / "broken.parquet"
    broken.write_bytes(b"not parquet")
    with pytest.raises(ExportError, match="cannot read"):
        import_export(broken, RETAIL_MAP)


def test_exports_in_other_text_encodings_are_read_with_encoding(tmp_path: Path) -> None:
    """A Windows export (cp1252) is refused with a hint by default and read with its encoding."""
    path = tmp_path / "windows.csv"
    path.write_bytes("CustID;OrderDate;Total;Store\r\n1;2025-01-02;5;Café München\r\n".encode("cp1252"))
    mapping = {**RETAIL_MAP, "region": "Store"}
    with pytest.raises(ExportError, match=r"not utf-8 text .*--encoding cp1252"):
        import_export(path, mapping, currency="EUR")
    assert one(import_export(path, mapping, currency="EUR", encoding="cp1252"))["region"] == "Café München"
    with pytest.raises(ExportError, match="unknown --encoding 'klingon'"):
        import_export(path, mapping, currency="EUR", encoding="klingon")
    utf8 = tmp_path / "bom.csv"
    utf8.write_bytes("\ufeffCustID,OrderDate,Total\n1,2025-01-02,5\n".encode())  # a byte order mark
    for encoding in ("utf-8", "UTF8", "utf-8-sig"):
        assert one(import_export(utf8, RETAIL_MAP, currency="EUR", encoding=encoding))["customer_id"] == "1"


def test_rows_with_fields_beyond_the_header(tmp_path: Path) -> None:
    """Empty fields after the last column (lines ending with a separator) change nothing,
    not even the generated ids; a row with text there had its values shifted by an
    unquoted separator and is rejected, while the rest of the file is imported."""
    plain = tmp_path / "plain.csv"
    plain.write_text("CustID,OrderDate,Total\n1,2025-01-02,5\n2,2025-01-03,7\n3,2025-01-04,9\n")
    trailing = tmp_path / "trailing.csv"  # pandas took such a file's first column for an index
    trailing.write_text("CustID,OrderDate,Total\n1,2025-01-02,5,\n2,2025-01-03,7,\n3,2025-01-04,9,, \n")
    want = import_export(plain, RETAIL_MAP, currency="USD")
    got = import_export(trailing, RETAIL_MAP, currency="USD")
    assert got.rejects.empty and len(want.events) == 3
    pd.testing.assert_frame_equal(got.events, want.events)

    excel = tmp_path / "excel.csv"  # the header ends with the separator too
    excel.write_text("CustID;OrderDate;Total;\n1;2025-01-02;5;\n2;2025-01-03;1;5;\n", encoding="utf-8")
    result = import_export(excel, RETAIL_MAP, currency="EUR")
    assert result.events["customer_id"].tolist() == ["1"] and result.rejects["reason"].tolist() == ["malformed_row"]

    shifted = tmp_path / "shifted.csv"
    shifted.write_text("CustID,OrderDate,Total\n1,2025-01-02,5\n2,2025-01-03,1,234.50\n3,2025-01-04,9,x,y\n4,2025-01-05,3\n")
    result = import_export(shifted, RETAIL_MAP, currency="USD")
    assert result.events["customer_id"].tolist() == ["1", "4"]
    assert result.rejects["row"].tolist() == [2, 3]
    assert set(result.rejects["reason"]) == {"malformed_row"}
    assert result.rejects["detail"].str.startswith(("'234.50' is beyond", "'x,y' is beyond")).all()
    assert result.rejects["Total"].tolist() == ["1", "9"]  # the row as read
    assert "beyond" not in " ".join(map(str, result.rejects.columns))


def test_order_lines_are_summed_into_one_event_per_order(tmp_path: Path) -> None:
    """A line-item export (price x quantity per row) becomes one event per order and type;
    re-importing gives the same ids; a bad line is a reject and the rest of its order counts."""
    lines = [
        {"Invoice": "A1", "Qty": "6", "Date": "2025-01-02 08:26", "Price": "2.55", "CustID": "17850"},
        {"Invoice": "A1", "Qty": "6", "Date": "2025-01-02 08:26", "Price": "3.39", "CustID": "17850"},
        {"Invoice": "B2", "Qty": "32", "Date": "2025-01-03 09:00", "Price": "1.69", "CustID": "13047"},
        {"Invoice": "B2", "Qty": "x", "Date": "2025-01-03 09:00", "Price": "2.10", "CustID": "13047"},
        {"Invoice": "B2", "Qty": "-2", "Date": "2025-01-05 10:00", "Price": "1.69", "CustID": "13047"},
        {"Invoice": "B2", "Qty": "-1", "Date": "2025-01-05 10:00", "Price": "1.00", "CustID": "13047"},
    ]
    path = export(tmp_path, lines)
    mapping = {"customer_id": "CustID", "occurred_at": "Date", "amount": "Price", "order_id": "Invoice"}
    options = {"currency": "GBP", "quantity": "Qty", "lines": True, "returns": "negative"}
    result = import_export(path, mapping, **options)  # type: ignore[arg-type]
    got = result.events[["order_id", "event_type", "customer_id", "amount"]].to_dict("records")
    assert got == [
        {"order_id": "A1", "event_type": "placed", "customer_id": "17850", "amount": pytest.approx(35.64)},
        {"order_id": "B2", "event_type": "placed", "customer_id": "13047", "amount": pytest.approx(54.08)},
        {"order_id": "B2", "event_type": "refunded", "customer_id": "13047", "amount": pytest.approx(4.38)},
    ]
    assert result.rejects[["row", "reason"]].values.tolist() == [[4, "unparseable_amount"]]
    assert "quantity" in result.rejects["detail"].iloc[0]
    again = import_export(path, mapping, **options)  # type: ignore[arg-type]
    assert again.events["event_id"].tolist() == result.events["event_id"].tolist()
    write_import(result, tmp_path / "events.parquet")
    checked = validated(tmp_path / "events.parquet")
    assert len(checked.events) == 3 and not checked.rejects
    without_lines = import_export(path, mapping, **{**options, "lines": False})  # type: ignore[arg-type]
    assert len(without_lines.events) == 5  # a row per line: the engine would see orders placed twice
    with pytest.raises(ExportError, match="--lines needs the column of order ids"):
        import_export(path, {k: v for k, v in mapping.items() if k != "order_id"}, **options)  # type: ignore[arg-type]
    with pytest.raises(ExportError, match="--quantity Units: no such column"):
        import_export(path, mapping, **{**options, "quantity": "Units"})  # type: ignore[arg-type]


# --- real exports' habits (Shopify, Excel, POS) ---------------------------------------------------


def _import_text(tmp_path: Path, text: str, mapping: dict[str, str] | None = None, **options: object) -> ImportResult:
    path = tmp_path / "export.csv"
    path.write_text(text, encoding="utf-8")
    return import_export(path, RETAIL_MAP if mapping is None else mapping, **options)  # type: ignore[arg-type]


def test_shopify_times_with_a_spaced_offset_or_a_zone_word(tmp_path: Path) -> None:
    result = _import_text(tmp_path, "CustID,OrderDate,Total\n1,2025-03-01 08:00:00 -0500,5\n"
                                    "2,2025-03-01 08:00:00 +0100,5\n3,2025-03-01 08:00 UTC,5\n",
                          currency="USD")
    assert result.rejects.empty
    assert result.events["occurred_at"].astype(str).tolist() == [
        "2025-03-01 13:00:00+00:00", "2025-03-01 07:00:00+00:00", "2025-03-01 08:00:00+00:00"]


@pytest.mark.parametrize(("dates", "day_first", "months"), [
    (["01-12-2010 08:26", "13-12-2010 08:26"], False, [12, 12]),  # 13 can only be a day
    (["01/12/2010", "12/13/2010"], False, [1, 12]),  # 13 can only be a day: month first
    (["01/12/2010", "02/11/2010"], False, [1, 2]),  # nothing tells: the default, month first
    (["01/12/2010", "02/11/2010"], True, [12, 11]),
    (["01/02/2025"] * 20 + ["31/12/2024"], False, [1] * 20),  # one odd row in 21 does not flip a column
])
def test_a_date_column_that_can_only_be_day_first_is_read_so(
    tmp_path: Path, dates: list[str], day_first: bool, months: list[int]
) -> None:
    rows = "".join(f"{i},{d},5\n" for i, d in enumerate(dates))
    result = _import_text(tmp_path, "CustID,OrderDate,Total\n" + rows, currency="USD", day_first=day_first)
    assert len(result.rejects) == len(dates) - len(months)
    assert [t.month for t in result.events["occurred_at"]] == months
    guessed = not day_first and months[0] == 12
    assert any("dates read day first" in note for note in result.notes) == guessed  # said, when guessed


def test_local_times_the_clocks_show_twice_or_skip_are_read_as_python_reads_them(tmp_path: Path) -> None:
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    dates = ["26.10.2025 02:30", "30.03.2025 02:30"]  # Berlin: shown twice; skipped
    rows = "".join(f"{i},{d},5\n" for i, d in enumerate(dates))
    result = _import_text(tmp_path, "CustID,OrderDate,Total\n" + rows, currency="EUR", timezone="Europe/Berlin")
    zone = ZoneInfo("Europe/Berlin")
    want = [datetime(2025, 10, 26, 2, 30, tzinfo=zone), datetime(2025, 3, 30, 2, 30, tzinfo=zone)]
    assert [t.to_pydatetime() for t in result.events["occurred_at"]] == [w.astimezone(UTC) for w in want]
    assert [t.hour for t in result.events["occurred_at"]] == [0, 1]  # 02:30 +02:00, and +01:00


@pytest.mark.parametrize(("text", "decimal_comma", "hint"), [
    ("1.234,50 €", False, "a decimal comma? add --decimal-comma"),
    ("89,90", False, "a decimal comma? add --decimal-comma"),
    ("1,234.50", True, "leave out --decimal-comma?"),
    ("12.50", True, "leave out --decimal-comma?"),
])
def test_an_amount_with_the_other_decimal_mark_is_rejected_with_a_hint(
    tmp_path: Path, text: str, decimal_comma: bool, hint: str
) -> None:
    """Before, 1.234,50 read as 1.2345 and 89,90 as 8990, and the import said nothing."""
    result = _import_text(tmp_path, f'CustID,OrderDate,Total\n1,2025-01-02,"{text}"\n2,2025-01-03,"1,234"\n',
                          currency="EUR", decimal_comma=decimal_comma)
    assert result.rejects["reason"].tolist() == ["unparseable_amount"]
    assert hint in result.rejects["detail"].iloc[0]
    assert result.events["amount"].tolist() == [1.234 if decimal_comma else 1234.0]


def test_currency_comes_from_the_column_then_the_amount_then_the_default(tmp_path: Path) -> None:
    """``Currency`` is found without --map; a symbol in the amount beats --currency."""
    result = _import_text(tmp_path, "CustID,OrderDate,Total,Currency\n1,2025-01-02,€20,\n"
                                    "2,2025-01-02,20,GBP\n3,2025-01-02,20,\n4,2025-01-02,CHF 20.50,\n",
                          currency="USD")
    assert result.events["currency"].tolist() == ["EUR", "GBP", "USD", "CHF"]
    glued = _import_text(tmp_path, "CustID,OrderDate,Total\n1,2025-01-02,20EUR\n2,2025-01-02,EUR20\n", currency="USD")
    assert glued.events["currency"].tolist() == ["EUR", "EUR"]
    square = _import_text(tmp_path, "Order ID,Customer ID,Date,Net Sales,Event Type\nT1,c1,2025-06-01,$10.00,Payment\n",
                          {"occurred_at": "Date", "amount": "Net Sales"})
    assert one(square)["event_type"] == "placed"  # a POS "Event Type" is not the canonical one
    assert one(square)["order_id"] == "T1" and one(square)["customer_id"] == "c1"
    with pytest.raises(ExportError, match="--currency 'EURO' is not a currency code"):
        _import_text(tmp_path, "CustID,OrderDate,Total\n1,2025-01-02,20\n", currency="EURO")


def test_quantity_rejects_name_the_quantity(tmp_path: Path) -> None:
    result = _import_text(tmp_path, "CustID,OrderDate,Total,Qty\n1,2025-01-02,14.00,0\n"
                                    "2,2025-01-02,1.69,-2\n3,2025-01-02,-1.25,-3\n4,2025-01-02,2,3\n",
                          currency="GBP", quantity="Qty")
    returns = _import_text(tmp_path, "CustID,OrderDate,Total,Qty,Order\n3,2025-01-02,-1.25,-3,A\n5,2025-01-02,1.25,-3,B\n",
                           {**RETAIL_MAP, "order_id": "Order"}, currency="GBP", quantity="Qty", returns="negative")
    assert one(returns)["event_type"] == "refunded"  # the negative quantity; -1.25 x -3 is no sale
    assert returns.rejects["detail"].tolist() == [
        "'-1.25' is a negative unit price with a negative quantity (a return is one or the other)"]
    assert result.events["amount"].tolist() == [6.0]
    assert result.rejects["detail"].tolist() == [
        "'0' is not a positive quantity",
        "'-2' is a negative quantity (returns are refunds only with --returns negative)",
        "'-3' is a negative quantity (returns are refunds only with --returns negative)",
    ]


def test_order_fields_left_blank_on_later_lines_are_taken_from_the_first(tmp_path: Path) -> None:
    """Shopify writes Currency (and Total) on an order's first line only."""
    text = ("Name,Email,Created at,Currency,Lineitem quantity,Lineitem price\n"
            "#1001,a@x.com,2025-03-01 08:00:00 -0500,USD,2,10.00\n"
            "#1001,a@x.com,2025-03-01 08:00:00 -0500,,1,36.00\n"
            "#1002,b@x.com,2025-03-02 09:00:00 -0500,EUR,1,5.00\n")
    mapping = {"order_id": "Name", "customer_id": "Email", "occurred_at": "Created at", "amount": "Lineitem price"}
    result = _import_text(tmp_path, text, mapping, quantity="Lineitem quantity", lines=True)
    assert result.rejects.empty
    assert list(zip(result.events["order_id"], result.events["amount"], result.events["currency"], strict=True)) == [
        ("#1001", 56.0, "USD"), ("#1002", 5.0, "EUR")]


def test_excel_separator_line_and_utf16_hint(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_text("sep=;\nCustID;OrderDate;Total\n1;2025-01-02;5\n", encoding="utf-8")
    assert one(import_export(path, RETAIL_MAP, currency="EUR"))["customer_id"] == "1"
    path.write_text("CustID,OrderDate,Total\n1,2025-01-02,5\n", encoding="utf-16")
    with pytest.raises(ExportError, match=r"try --encoding utf-16"):
        import_export(path, RETAIL_MAP, currency="EUR")
    assert one(import_export(path, RETAIL_MAP, currency="EUR", encoding="utf-16"))["amount"] == 5.0


def test_skip_leaves_out_rows_by_a_status_column_and_counts_them(tmp_path: Path) -> None:
    """Shopify's voided orders and a shop's cancelled ones never counted as spend."""
    text = ("Name,Email,Created at,Total,Financial Status\n#1,a@x.com,2025-03-01,10,paid\n"
            "#2,b@x.com,2025-03-01,20,Voided\n#3,c@x.com,2025-03-01,oops,paid\n#4,d@x.com,2025-03-01,40, voided \n")
    mapping = {"order_id": "Name", "customer_id": "Email", "occurred_at": "Created at", "amount": "Total"}
    result = _import_text(tmp_path, text, mapping, currency="USD", skip=(("Financial Status", "voided"),))
    assert result.events["order_id"].tolist() == ["#1"]
    assert result.skipped == 2
    assert result.rejects["row"].tolist() == [3]  # the rest is checked as usual, numbered as in the file
    with pytest.raises(ExportError, match="--skip Status=x: no such column"):
        _import_text(tmp_path, text, mapping, currency="USD", skip=(("Status", "x"),))
