"""Text the store cannot keep: the NUL character and unpaired UTF-16 surrogates.

PostgreSQL text refuses NUL (``\\u0000``), and no database driver can encode a lone
surrogate (``\\ud800``, which JSON can carry) as UTF-8; SQLite keeps NUL, so only
production saw the error. The store checks text here before it writes or looks up
anything, on every backend, so SQLite and PostgreSQL refuse the same input.
"""

from __future__ import annotations

NUL = "\x00"


def unsupported_character(value: str) -> str | None:
    """What in ``value`` the store cannot keep (for a message), or None when it is fine."""
    if NUL in value:
        return "the NUL character (\\u0000)"
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            return f"an unpaired surrogate (\\u{ord(value[exc.start]):04x})"
    return None


def storable(value: str | None) -> bool:
    """Whether the store can keep ``value`` (None: nothing to keep, so yes)."""
    return value is None or unsupported_character(value) is None


def refusal(field: str, value: str) -> str | None:
    """``<field> contains <what>, which the store cannot keep``, or None when it can."""
    what = unsupported_character(value)
    return None if what is None else f"{field} contains {what}, which the store cannot keep"
