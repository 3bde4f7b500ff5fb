"""``make bench`` replaces a section's measured part and keeps the history written by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "bench_sections", Path(__file__).resolve().parents[2] / "benchmarks" / "sections.py"
)
assert _spec is not None and _spec.loader is not None
sections = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sections)
HISTORY_MARK, write_section = sections.HISTORY_MARK, sections.write_section


def test_the_measured_part_is_replaced_and_the_history_kept(tmp_path: Path) -> None:
    path = tmp_path / "bench" / "classify.md"
    write_section(path, "## run 1\n")
    assert path.read_text() == "## run 1\n"  # no mark yet: the file is the section
    path.write_text(path.read_text() + f"\n{HISTORY_MARK}\n\n### Session 8\nnotes\n")
    write_section(path, "## run 2\n\n")
    assert path.read_text() == f"## run 2\n\n{HISTORY_MARK}\n\n### Session 8\nnotes\n"
    write_section(path, "## run 3")
    assert path.read_text().startswith("## run 3\n\n" + HISTORY_MARK) and "run 2" not in path.read_text()
