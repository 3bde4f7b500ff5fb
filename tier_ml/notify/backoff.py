"""Retry timing: exponential backoff with deterministic jitter.

Attempt ``n`` (1-based, the attempt that just failed) waits
``min(max_backoff, backoff * 2**(n-1))`` scaled by a factor in
``[1 - jitter, 1 + jitter]``. The factor is a hash of the message key, the
attempt and a seed rather than a random draw: messages that failed together
spread out (the point of jitter), while a test, or a replay of the same
history, gets the same schedule every time.
"""

from __future__ import annotations

import hashlib

from tier_ml.money import MICROS_PER_UNIT


def jitter_factor(key: str, attempt: int, jitter: float, seed: int = 0) -> float:
    """A factor in ``[1 - jitter, 1 + jitter]``, fixed by ``(key, attempt, seed)``."""
    digest = hashlib.sha256(f"{seed}|{key}|{attempt}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64  # [0, 1)
    return 1.0 - jitter + 2.0 * jitter * unit


def backoff_us(
    attempt: int,
    *,
    base_seconds: float,
    max_seconds: float,
    jitter: float,
    key: str,
    seed: int = 0,
) -> int:
    """Microseconds to wait after failed attempt number ``attempt`` (1-based)."""
    exponent = min(max(attempt - 1, 0), 62)
    delay = min(max_seconds, base_seconds * 2.0**exponent)
    return max(1, round(delay * jitter_factor(key, attempt, jitter, seed) * MICROS_PER_UNIT))
