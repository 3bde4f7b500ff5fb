"""Webhook signatures: ``X-TierML-Signature: sha256=<hex HMAC-SHA256 of the raw body>``.

Receivers verify with :func:`verify` (constant-time) over the exact bytes they
received, before parsing the JSON.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "X-TierML-Signature"
IDEMPOTENCY_HEADER = "Idempotency-Key"
EVENT_HEADER = "X-TierML-Event"
ATTEMPT_HEADER = "X-TierML-Attempt"


def sign(body: bytes, secret: str) -> str:
    """The signature header value of ``body``."""
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify(body: bytes, secret: str, header: str | None) -> bool:
    """Whether ``header`` is the signature of ``body`` under ``secret``."""
    return header is not None and hmac.compare_digest(sign(body, secret), header.strip())
