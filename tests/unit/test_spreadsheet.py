import pandas as pd

from tier_ml.spreadsheet import neutralise_cell, spreadsheet_safe


def test_text_formulas_become_literal_text() -> None:
    for formula in ["=1+1", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx"]:
        assert neutralise_cell(formula) == "'" + formula


def test_plain_text_numbers_and_missing_values_are_kept() -> None:
    frame = pd.DataFrame(
        {"note": ["press partner", "=cmd|' /C calc'!A0", None], "amount": [-12.5, 3.0, 0.0]}
    ).astype({"note": object})
    safe = spreadsheet_safe(frame)
    assert safe["note"].tolist() == ["press partner", "'=cmd|' /C calc'!A0", None]
    assert safe["amount"].tolist() == [-12.5, 3.0, 0.0]
    assert frame["note"][1] == "=cmd|' /C calc'!A0"  # the input is not changed


def test_negative_numbers_in_object_columns_stay_numbers() -> None:
    frame = pd.DataFrame({"value": [-5, "-5", "x"]}, dtype=object)
    assert spreadsheet_safe(frame)["value"].tolist() == [-5, "'-5", "x"]
