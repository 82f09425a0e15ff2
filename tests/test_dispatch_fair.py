"""Fair shares of the global delivery slots (``dispatch_fair``): who may take a slot while
others hold theirs and never give them back (receivers that never answer)."""

from __future__ import annotations

from palyra_py.outbound.fair import FairShare


def fill(slots: FairShare, *takers: tuple[str, str]) -> dict[str, int]:
    """The takers ask for a slot in turn, each as long as it may; how many each got."""
    got = {sub: 0 for sub, _ in takers}
    progress = True
    while progress:
        progress = False
        for sub, owner in takers:
            if slots.may_take(sub, owner):
                slots.take(sub, owner)
                got[sub] += 1
                progress = True
    return got


def test_a_lone_subscription_may_take_every_slot() -> None:
    slots = FairShare(8)
    slots.set_parties(subscriptions=1, owners=1)
    assert fill(slots, ("only", "default")) == {"only": 8}
    assert slots.free == 0 and not slots.may_take("only", "default")


def test_one_hog_holds_half_and_a_newcomer_always_finds_a_slot() -> None:
    slots = FairShare(8)
    slots.set_parties(subscriptions=3, owners=1)
    assert fill(slots, ("hog", "default")) == {"hog": 4}
    # Whoever holds nothing starts as long as one slot is free.
    assert fill(slots, ("other", "default")) == {"other": 2}
    assert fill(slots, ("third", "default")) == {"third": 1}
    assert slots.free == 1 and not slots.may_take("hog", "default")


def test_an_owners_subscriptions_together_hold_at_most_the_owners_share() -> None:
    slots = FairShare(8)
    slots.set_parties(subscriptions=4, owners=2)
    noisy = [("n1", "noisy"), ("n2", "noisy"), ("n3", "noisy")]
    assert sum(fill(slots, *noisy).values()) == 4
    assert slots.held_by_owner("noisy") == 4
    assert fill(slots, ("q", "quiet")) == {"q": 2}
    # The quiet owner's slot goes back and is taken again: the noisy owner gets none.
    slots.give_back("q", "quiet")
    assert not any(slots.may_take(sub, owner) for sub, owner in noisy)
    assert slots.may_take("q", "quiet")


def test_a_single_owner_is_not_capped_at_the_owner_level() -> None:
    slots = FairShare(8)
    slots.set_parties(subscriptions=2, owners=1)
    got = fill(slots, ("a", "default"), ("b", "default"))
    assert sum(got.values()) == 6 and max(got.values()) <= 4


def test_k_hogs_once_turned_over_each_hold_a_share_and_leave_as_much_free() -> None:
    total, hogs = 12, [(f"h{i}", f"o{i}") for i in range(3)]
    slots = FairShare(total)
    slots.set_parties(subscriptions=4, owners=4)
    first = fill(slots, *hogs)
    assert sum(first.values()) < total  # even the first grab leaves a slot free
    # Their requests time out one by one and each asks again at once: the slots go round.
    for _ in range(5):
        for sub, owner in hogs:
            for _ in range(slots.held_by(sub)):
                slots.give_back(sub, owner)
                fill(slots, *hogs)
    assert all(slots.held_by(sub) <= total // (len(hogs) + 1) + 1 for sub, _ in hogs)
    assert slots.free >= total // (len(hogs) + 1) - 1
    assert slots.may_take("newcomer", "o-new")


def test_slots_given_back_are_forgotten() -> None:
    slots = FairShare(2)
    slots.set_parties(subscriptions=2, owners=2)
    slots.take("a", "x")
    slots.give_back("a", "x")
    assert slots.free == 2 and slots.held_by("a") == 0 and slots.held_by_owner("x") == 0
