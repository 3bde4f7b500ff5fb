"""Writing a command's result table, shared by the command groups that write one."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd


def write_frame(frame: pd.DataFrame, out: Path) -> None:
    """Write ``frame`` as CSV when ``out`` ends in .csv, else as Parquet (folders created).
    Callers check ``out`` before their work (``tier_ml.cli.output_path_or_exit``)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".csv":
        frame.to_csv(out, index=False)
    else:
        frame.to_parquet(out, index=False)
