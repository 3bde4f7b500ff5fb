import pytest

from serving.web.throttle import LoginThrottle, throttle_from_env


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_blocks_after_the_limit_until_the_oldest_failure_leaves_the_window() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_seconds=60, clock=clock)
    for step in range(3):
        assert throttle.retry_after("1.2.3.4") is None
        throttle.failed("1.2.3.4")
        clock.now += 10 * (step < 2)
    assert throttle.retry_after("1.2.3.4") == 40  # first failure at 1000, now 1020
    assert throttle.retry_after("5.6.7.8") is None  # other addresses are not affected
    clock.now = 1060.5
    assert throttle.retry_after("1.2.3.4") is None  # two failures left in the window


def test_a_valid_login_clears_the_address() -> None:
    throttle = LoginThrottle(max_failures=2, window_seconds=60, clock=Clock())
    throttle.failed("a")
    throttle.failed("a")
    assert throttle.retry_after("a") is not None
    throttle.succeeded("a")
    assert throttle.retry_after("a") is None


def test_tracks_a_bounded_number_of_addresses() -> None:
    throttle = LoginThrottle(max_failures=1, window_seconds=60, clock=Clock(), max_clients=2)
    for client in ["a", "b", "c"]:
        throttle.failed(client)
    assert throttle.retry_after("a") is None  # the least recently seen was dropped
    assert throttle.retry_after("b") is not None and throttle.retry_after("c") is not None


def test_settings_from_the_environment() -> None:
    throttle = throttle_from_env(
        {"TIER_ML_LOGIN_MAX_FAILURES": "4", "TIER_ML_LOGIN_WINDOW_SECONDS": "30"}
    )
    assert (throttle.max_failures, throttle.window_seconds) == (4, 30)
    assert throttle_from_env({}).max_failures == 10
    with pytest.raises(ValueError, match="TIER_ML_LOGIN_MAX_FAILURES must be a whole number"):
        throttle_from_env({"TIER_ML_LOGIN_MAX_FAILURES": "many"})
    with pytest.raises(ValueError, match="must be positive"):
        throttle_from_env({"TIER_ML_LOGIN_WINDOW_SECONDS": "0"})
