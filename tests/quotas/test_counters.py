"""Counter store semantics, identical for the Redis and the in-process store."""

import asyncio

from apps.quotas.counters import CounterCheck

from .conftest import make_store


def req(key: str, limit: int) -> CounterCheck:
    return CounterCheck(key=key, limit=limit, amount=1, ttl=60)


def tok(key: str, limit: int, amount: int) -> CounterCheck:
    return CounterCheck(key=key, limit=limit, amount=amount, ttl=60, reserve=True)


async def test_admits_up_to_the_limit(store, key_prefix):
    key = key_prefix + "requests"
    results = [await store.admit([req(key, 3)]) for _ in range(5)]
    assert [r.allowed for r in results] == [True, True, True, False, False]
    assert [r.used for r in results] == [(1,), (2,), (3,), (3,), (3,)]
    assert await store.read([key]) == [3]


async def test_all_or_none(store, key_prefix):
    roomy, tight = key_prefix + "roomy", key_prefix + "tight"
    assert (await store.admit([req(roomy, 100), req(tight, 1)])).allowed
    refused = await store.admit([req(roomy, 100), req(tight, 1)])
    assert not refused.allowed
    # The usage of every counter comes back, so the caller can name each broken rule.
    assert refused.used == (1, 1)
    # Nothing changed on the counter that had room.
    assert await store.read([roomy, tight]) == [1, 1]


async def test_empty_check_list_is_allowed(store):
    result = await store.admit([])
    assert result.allowed
    assert result.reservation is None


async def test_reservation_refuses_what_does_not_fit(store, key_prefix):
    key = key_prefix + "tokens"
    first = await store.admit([tok(key, 1000, 600)])
    assert first.allowed
    assert first.reservation is not None
    assert not (await store.admit([tok(key, 1000, 600)])).allowed
    assert (await store.admit([tok(key, 1000, 400)])).allowed
    assert await store.read([key]) == [1000]


async def test_settle_replaces_the_reservation_by_actual_usage(store, key_prefix):
    tokens, requests = key_prefix + "tokens", key_prefix + "requests"
    admitted = await store.admit([req(requests, 10), tok(tokens, 1000, 800)])
    assert admitted.used == (1, 800)
    # Only reserved counters are settled; the request counter stays as admitted.
    assert [c.key for c in admitted.reservation.checks] == [tokens]
    await store.settle(admitted.reservation, [150])
    assert await store.read([requests, tokens]) == [1, 150]
    # Settling twice must not subtract the reservation twice.
    await store.settle(admitted.reservation, [150])
    assert await store.read([tokens]) == [300]


async def test_settle_can_exceed_the_reservation(store, key_prefix):
    key = key_prefix + "cost"
    admitted = await store.admit([tok(key, 10_000, 100)])
    await store.settle(admitted.reservation, [250])
    assert await store.read([key]) == [250]


async def test_dead_reservations_are_released_after_their_timeout(store_kind, key_prefix):
    store = make_store(store_kind, reservation_ttl=0.2)
    try:
        key = key_prefix + "tokens"
        dead = await store.admit([tok(key, 1000, 900)])
        assert dead.allowed
        assert not (await store.admit([tok(key, 1000, 900)])).allowed
        await asyncio.sleep(0.35)
        # The next admission drops the expired reservation before checking.
        again = await store.admit([tok(key, 1000, 900)])
        assert again.allowed
        assert again.used == (900,)
        # A late settle of the dead request still counts its actual usage, in full.
        await store.settle(dead.reservation, [50])
        assert await store.read([key]) == [950]
    finally:
        if store_kind == "redis":
            await store.aclose()


async def test_counters_expire_with_their_ttl(store_kind, key_prefix, request):
    if store_kind == "redis":
        sync_redis = request.getfixturevalue("sync_redis")
    store = make_store(store_kind)
    try:
        key = key_prefix + "short"
        await store.admit([CounterCheck(key=key, limit=5, amount=1, ttl=1)])
        if store_kind == "redis":
            assert 0 < sync_redis.ttl(key) <= 1
        await asyncio.sleep(1.2)
        assert await store.read([key]) == [0]
    finally:
        if store_kind == "redis":
            await store.aclose()
