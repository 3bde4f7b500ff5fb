"""A limit on failed dashboard logins per client address.

Why: API keys are long random tokens, so guessing one is hopeless, but a login form
that answers every guess as fast as it can still invites scripted attempts and
fills the logs. After ``max_failures`` wrong keys from one address within
``window_seconds`` the form answers 429 (with ``Retry-After``) until the oldest of
those failures leaves the window; a successful login clears the address.

In-memory and per process (like the per-process session secret fallback): with
several workers each keeps its own count. At most ``max_clients`` addresses are
tracked, the least recently seen dropped first, so a flood of addresses cannot
grow memory without bound.
"""

from __future__ import annotations

import math
import os
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping

MAX_FAILURES_ENV = "TIER_ML_LOGIN_MAX_FAILURES"
WINDOW_ENV = "TIER_ML_LOGIN_WINDOW_SECONDS"
DEFAULT_MAX_FAILURES = 10
DEFAULT_WINDOW_SECONDS = 600


class LoginThrottle:
    """Counts failed logins per client in a sliding window (time from an injected clock)."""

    def __init__(
        self,
        max_failures: int = DEFAULT_MAX_FAILURES,
        window_seconds: float = DEFAULT_WINDOW_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 10_000,
    ) -> None:
        if max_failures < 1 or window_seconds <= 0 or max_clients < 1:
            raise ValueError("max_failures, window_seconds and max_clients must be positive")
        self.max_failures = max_failures
        self.window_seconds = window_seconds
        self.max_clients = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, client: str) -> int | None:
        """Whole seconds until ``client`` may try again; None when it may try now."""
        recent = self._recent(client)
        if recent is None or len(recent) < self.max_failures:
            return None
        oldest_counted = recent[-self.max_failures]
        return max(1, math.ceil(oldest_counted + self.window_seconds - self._clock()))

    def failed(self, client: str) -> None:
        """Record a wrong key from ``client``."""
        recent = self._recent(client)
        if recent is None:
            recent = self._failures[client] = deque(maxlen=self.max_failures)
            while len(self._failures) > self.max_clients:
                self._failures.popitem(last=False)
        recent.append(self._clock())
        self._failures.move_to_end(client)

    def succeeded(self, client: str) -> None:
        """A valid login: the address starts afresh."""
        self._failures.pop(client, None)

    def _recent(self, client: str) -> deque[float] | None:
        recent = self._failures.get(client)
        if recent is None:
            return None
        horizon = self._clock() - self.window_seconds
        while recent and recent[0] <= horizon:
            recent.popleft()
        if not recent:
            del self._failures[client]
            return None
        return recent


def throttle_from_env(environ: Mapping[str, str] | None = None) -> LoginThrottle:
    """The throttle configured by ``TIER_ML_LOGIN_MAX_FAILURES`` / ``..._WINDOW_SECONDS``."""
    environ = os.environ if environ is None else environ
    return LoginThrottle(
        max_failures=_positive(environ, MAX_FAILURES_ENV, DEFAULT_MAX_FAILURES),
        window_seconds=_positive(environ, WINDOW_ENV, DEFAULT_WINDOW_SECONDS),
    )


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, not {text!r}") from None
    if value <= 0:
        raise ValueError(f"{name} must be positive, not {value}")
    return value
