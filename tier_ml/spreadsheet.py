"""Exports that people open in a spreadsheet.

Why: compliance opens the audit CSV in Excel or LibreOffice, and a text cell that
starts with ``=``, ``+``, ``-``, ``@`` (or a tab / carriage return) is run there as
a formula. Actors, override reasons and customer ids come from users, so a cell
like ``=HYPERLINK(...)`` could run on a reviewer's machine (CSV injection, OWASP).
Such text cells get a leading apostrophe, which spreadsheets show as plain text;
numbers (negative amounts included) are left alone.
"""

from __future__ import annotations

import pandas as pd

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(value: object) -> object:
    """The cell as a spreadsheet shows it literally: text formulas get a leading ``'``."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def spreadsheet_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas."""
    safe = frame.copy()
    for column in safe.columns:
        if safe[column].dtype == object:
            safe[column] = safe[column].map(neutralise_cell)
    return safe
