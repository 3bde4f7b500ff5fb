"""A replay resumed from a checkpoint gives exactly the full replay (the online store relies on it)."""

from __future__ import annotations

import random

import pytest

from tests.eventgen import as_of_instants, random_events, random_policy
from tier_ml import rules
from tier_ml.events import validate
from tier_ml.money import instant_to_micros
from tier_ml.rules import replay

DAY_US = 86_400_000_000


def _customers(rng: random.Random):
    policy = random_policy(rng)
    rows = random_events(rng, customers=4)
    as_ofs = sorted(instant_to_micros(t) for t in as_of_instants(rng, 3))
    events = validate(rows, policy, max(as_ofs)).events
    by_customer: dict[str, list] = {}
    for event in events:
        by_customer.setdefault(event.customer_id, []).append(event)
    return policy, by_customer, as_ofs


@pytest.mark.parametrize("seed", range(30))
def test_resumed_replay_equals_full_replay(seed: int) -> None:
    rng = random.Random(seed)
    policy, by_customer, as_ofs = _customers(rng)
    resumed_count = 0
    for customer_id, events in by_customer.items():
        instants = sorted({e.at_us for e in events})
        for as_of in as_ofs:
            full = replay(policy, customer_id, events, as_of)
            # A checkpoint taken by an earlier replay that saw only the events before its cut,
            # as the store takes one before the events of the next batch arrive.
            for cut in [*rng.sample(instants, min(4, len(instants))), as_of + 1]:
                earlier = [e for e in events if e.at_us < cut]
                first = replay(policy, customer_id, earlier, min(as_of, cut - 1), checkpoint_before=cut)
                if first is None or first.checkpoint is None:
                    continue
                visible = [e for e in events if e.at_us <= as_of]
                resumed_count += rules._resumable(policy, customer_id, visible, as_of, first.checkpoint) is not None
                resumed = replay(policy, customer_id, events, as_of, resume=first.checkpoint)
                assert resumed is not None and full is not None
                assert _comparable(resumed) == _comparable(full), (customer_id, cut, as_of)
    assert resumed_count > 0  # the checkpoints were used, not only ignored


@pytest.mark.parametrize("seed", range(30))
def test_resumed_replay_equals_full_replay_as_the_store_checkpoints(seed: int) -> None:
    """The store's pattern: a replay at any later clock, checkpointed at its latest event.

    The first replay sees the events at or before an instant ``latest`` (those *at* it
    too) and runs to a clock at or after it, so the instants from ``latest`` on (that
    event's maturity, window exit, grace end) are replayed before the checkpoint is cut.
    """
    rng = random.Random(7000 + seed)
    policy, by_customer, as_ofs = _customers(rng)
    for customer_id, events in by_customer.items():
        instants = sorted({e.at_us for e in events})
        as_of = max(as_ofs[-1], instants[-1])
        full = replay(policy, customer_id, events, as_of)
        for latest in rng.sample(instants, min(4, len(instants))):
            seen = [e for e in events if e.at_us <= latest]
            clock = rng.choice([latest, (latest + as_of) // 2, as_of])
            first = replay(policy, customer_id, seen, clock, checkpoint_before=latest)
            if first is None or first.checkpoint is None:
                continue
            resumed = replay(policy, customer_id, events, as_of, resume=first.checkpoint)
            assert _comparable(resumed) == _comparable(full), (customer_id, latest, clock)


@pytest.mark.parametrize("seed", range(30))
def test_a_chain_of_resumed_replays_equals_full_replays(seed: int) -> None:
    """Events arrive a few at a time; each replay resumes from the last one's checkpoint.

    This is the store's loop: after each arrival, and at sweeps at later clocks with
    no new events, the customer is replayed at the clock, resuming from the checkpoint
    of the replay before, and checkpointed at the latest event seen.
    """
    rng = random.Random(9000 + seed)
    policy, by_customer, as_ofs = _customers(rng)
    for customer_id, events in by_customer.items():
        events = sorted(events, key=lambda e: (e.at_us, e.event_id))
        checkpoint = None
        clock = -(2**62)
        seen = 0
        while seen < len(events):
            seen += rng.choice([1, 1, 2, 3])
            arrived = events[:seen]
            latest = arrived[-1].at_us
            following = events[seen].at_us if seen < len(events) else as_ofs[-1] + 400 * DAY_US
            start = max(clock, latest)
            end = max(start, following - 1)
            for clock in sorted({start, rng.randint(start, end), (start + end) // 2, end}):
                resumed = replay(policy, customer_id, arrived, clock, resume=checkpoint, checkpoint_before=latest)
                full = replay(policy, customer_id, arrived, clock)
                assert _comparable(resumed) == _comparable(full), (customer_id, seen, clock)
                checkpoint = resumed.checkpoint if resumed is not None else None


def test_a_checkpoint_that_no_longer_holds_is_ignored() -> None:
    rng = random.Random(5)
    policy, by_customer, as_ofs = _customers(rng)
    customer_id, events = max(by_customer.items(), key=lambda item: len(item[1]))
    instants = sorted({e.at_us for e in events})
    cut = instants[len(instants) // 2]
    as_of = max(as_ofs[-1], instants[-1])
    partial = replay(policy, customer_id, [e for e in events if e.at_us < cut][:-1], cut - 1,
                     checkpoint_before=cut)
    assert partial is not None and partial.checkpoint is not None
    # One event before the cut was missing when the checkpoint was taken: a full replay is done.
    resumed = replay(policy, customer_id, events, as_of, resume=partial.checkpoint)
    assert _comparable(resumed) == _comparable(replay(policy, customer_id, events, as_of))


def _comparable(state):
    return None if state is None else {
        name: getattr(state, name) for name in state.__dataclass_fields__ if name != "checkpoint"
    }
