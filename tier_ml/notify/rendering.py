"""Email rendering: one Jinja2 template pair per event kind.

``templates/<kind>.txt`` holds the subject (first line, ``Subject: ...``) and
the plain-text body; ``templates/<kind>.html`` the optional HTML body
(autoescaped). A channels file may name a ``templates_dir`` whose files
replace the packaged ones by name, so marketing edits wording without code.
Undefined variables are errors (``StrictUndefined``): a message that would
read "Dear ," is never sent; it is dead-lettered with the template error.

Filters for template authors: ``date`` (an ISO instant as "30 June 2025"),
``money(currency)`` ("USD 1,234.50") and ``perk_lines`` (a tier's perks as
readable lines: ``free_shipping: true`` becomes "Free shipping",
``discount_rate: 0.05`` becomes "Discount 5%", false and zero perks are left out).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from jinja2 import (
    ChoiceLoader,
    Environment,
    FileSystemLoader,
    PackageLoader,
    StrictUndefined,
    TemplateNotFound,
    select_autoescape,
)

SUBJECT_PREFIX = "Subject:"


class TemplateError(ValueError):
    """A template that is missing or cannot render this message."""


@dataclass(frozen=True)
class RenderedEmail:
    subject: str
    text: str
    html: str | None


def build_environment(templates_dir: Path | None = None) -> Environment:
    """The Jinja2 environment: ``templates_dir`` first, then the packaged templates."""
    loaders: list[Any] = []
    if templates_dir is not None:
        loaders.append(FileSystemLoader(str(templates_dir)))
    loaders.append(PackageLoader("tier_ml.notify", "templates"))
    environment = Environment(
        loader=ChoiceLoader(loaders),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=False),
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
    )
    environment.filters["date"] = format_date
    environment.filters["money"] = format_money
    environment.filters["perk_lines"] = perk_lines
    return environment


def render_email(environment: Environment, kind: str, context: Mapping[str, Any]) -> RenderedEmail:
    """Subject, text and HTML of the ``kind`` email for ``context``."""
    try:
        text = environment.get_template(f"{kind}.txt").render(context)
    except TemplateNotFound:
        raise TemplateError(f"no email template {kind}.txt") from None
    except Exception as exc:  # jinja2's UndefinedError, TemplateSyntaxError, filter errors
        raise TemplateError(f"template {kind}.txt: {exc}") from None
    first, _, body = text.partition("\n")
    if not first.startswith(SUBJECT_PREFIX):
        raise TemplateError(f"template {kind}.txt must start with a '{SUBJECT_PREFIX} ...' line")
    try:
        html = environment.get_template(f"{kind}.html").render(context)
    except TemplateNotFound:
        html = None
    except Exception as exc:
        raise TemplateError(f"template {kind}.html: {exc}") from None
    return RenderedEmail(first.removeprefix(SUBJECT_PREFIX).strip(), body.lstrip("\n"), html)


def format_date(value: str | datetime | None) -> str:
    """An instant as a date a customer reads ("30 June 2025", UTC)."""
    if value is None:
        return ""
    instant = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return f"{instant.day} {instant:%B %Y}"


def format_money(amount: float | int | None, currency: str = "") -> str:
    """An amount with thousands separators and cents ("USD 1,234.50")."""
    if amount is None:
        return ""
    text = f"{float(amount):,.2f}"
    return f"{currency} {text}".strip()


def perk_lines(perks: Mapping[str, Any] | None) -> list[str]:
    """A tier's perks as lines a customer reads (false and zero perks left out)."""
    lines = []
    for key, value in (perks or {}).items():
        label = key.replace("_", " ").strip().capitalize()
        if isinstance(value, bool):
            if value:
                lines.append(label)
        elif isinstance(value, int | float):
            if value == 0:
                continue
            if key.endswith("_rate") and 0 < value <= 1:
                lines.append(f"{label.removesuffix(' rate')} {value:.0%}")
            else:
                lines.append(f"{label}: {value:g}")
        elif isinstance(value, list | tuple):
            if value:
                lines.append(f"{label}: {', '.join(str(v) for v in value)}")
        elif value not in (None, ""):
            lines.append(f"{label}: {value}")
    return lines
