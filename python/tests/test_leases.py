"""The loss rules of `leasekeeper.leases`, with time passed in (the Rust SDK's
`worker::leases` tests, rule for rule)."""
from leasekeeper.leases import Leases

TTL = 3.0


def leases_with(token: int):
    l = Leases(now=0.0)
    lost = l.track(token, bytes([token]) * 16, TTL, TTL / 3, started_at=0.0, now=0.0)
    return l, lost


def test_cut_off_for_a_ttl_loses_the_lease():
    l, lost = leases_with(1)
    l.lose_unconfirmed(TTL)
    assert not lost.is_set(), "exactly one TTL is not yet past it"
    l.lose_unconfirmed(TTL + 0.001)
    assert lost.is_set()
    assert "no node reachable" in l.reason(1)


def test_nodes_answering_retry_keep_it_for_two_ttls_not_more():
    l, lost = leases_with(1)
    now = 0.0
    # Nodes answer (an election: RETRY), but nothing commits.
    for _ in range(20):
        now += TTL / 10
        l.contact(now)
        l.lose_unconfirmed(now)
    assert not lost.is_set(), "an election alone never costs a lease"
    now += 0.001
    l.contact(now)
    l.lose_unconfirmed(now)
    assert lost.is_set()
    assert "two lease TTLs" in l.reason(1)


def test_confirmations_hold_it_and_only_move_forward():
    l, lost = leases_with(1)
    l.confirm(1, TTL - 0.01, 0)
    # An older confirmation arriving late does not move it back.
    l.confirm(1, 0.0, 0)
    l.lose_unconfirmed(2 * TTL - 0.02)
    assert not lost.is_set()
    l.lose_unconfirmed(2 * TTL)
    assert lost.is_set()


def test_a_reported_lease_is_never_lost_by_silence_and_ends_when_the_cluster_says():
    l, lost = leases_with(1)
    l.mark_reported(1)
    l.lose_unconfirmed(10 * TTL)
    assert not lost.is_set(), "the report stands on its own"
    assert len(l) == 1, "renewed until the report is acknowledged"
    l.lose(1, "expired")
    assert lost.is_set()
    assert len(l) == 0, "nothing left to protect"


def test_a_lost_lease_keeps_its_first_reason_and_is_no_longer_renewed():
    l, lost = leases_with(1)
    l.track(2, b"\x02" * 16, TTL, 0.5, started_at=0.0, now=0.0)
    l.lose(1, "cancelled")
    l.lose(1, "expired")
    assert lost.is_set()
    assert l.reason(1) == "cancelled"
    tokens, secrets, interval = l.due()
    assert tokens == [2]
    assert secrets == [b"\x02" * 16]
    assert interval == 0.5, "the shortest interval"


def test_an_old_lease_is_renewed_at_once():
    l = Leases(now=0.0)
    l.track(1, b"", TTL, TTL / 3, started_at=0.0, now=TTL / 3)
    assert l.renew_now.is_set(), "a renewal is asked for at once"
    fresh = Leases(now=0.0)
    fresh.track(1, b"", TTL, TTL / 3, started_at=0.0, now=0.0)
    assert not fresh.renew_now.is_set()
