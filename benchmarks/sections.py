"""Writing a benchmark's section of ``docs/bench/``: the measured part is replaced, the
history written by hand below :data:`HISTORY_MARK` is kept.

Before, ``--write`` replaced the whole file, so ``make bench`` erased the before/after
notes of earlier rounds (``classify.md``, ``store.md``, ``serving.md``).
"""

from __future__ import annotations

from pathlib import Path

#: The line after which a section file is kept as it is (notes written by hand).
HISTORY_MARK = "<!-- Kept by `make bench`: everything below is history written by hand. -->"


def write_section(path: Path, section: str) -> None:
    """Write ``section`` to ``path``, followed by the history ``path`` already has, if any."""
    history = ""
    if path.exists():
        text = path.read_text(encoding="utf-8")
        at = text.find(HISTORY_MARK)
        if at >= 0:
            history = "\n" + text[at:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(section.rstrip("\n") + "\n" + history, encoding="utf-8")
