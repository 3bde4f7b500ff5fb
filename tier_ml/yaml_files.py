"""Reading the project's YAML files (policy, channels) with one-line errors a person can act on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path, what: str, error: type[ValueError]) -> Any:
    """The parsed document at ``path``; an unreadable file or bad YAML raises ``error``
    naming ``what`` (e.g. "policy file") and the path."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise error(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise error(f"{path}: not valid YAML: {exc}") from None
